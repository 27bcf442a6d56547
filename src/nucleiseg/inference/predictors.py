"""Predictor callables: ``(B, C, h, w) float32 -> (B, K, h, w)`` probabilities.

Tiling, TTA and the segmenter take any such callable, so PyTorch and ONNX Runtime models share
one pipeline.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

Predictor = Callable[[np.ndarray], np.ndarray]


def torch_predictor(model: torch.nn.Module, device: str | torch.device = "cpu") -> Predictor:
    """Wrap a PyTorch model returning logits into a numpy probability predictor.

    The model is put in eval mode and channels-last memory format; calls run under
    ``torch.inference_mode`` and apply a sigmoid to the logits.
    """
    model.eval()
    device = torch.device(device)
    model.to(device=device, memory_format=torch.channels_last)  # measured 10-40 % faster on CPU

    def predict(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(device)
            x = x.contiguous(memory_format=torch.channels_last)
            return np.ascontiguousarray(torch.sigmoid(model(x)).float().cpu().numpy())

    return predict
