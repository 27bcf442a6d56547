"""Predictors and the registry of backends that build them from a :class:`~nucleiseg.bundle.ModelBundle`.

A predictor is a callable ``(B, C, h, w) float32 -> (B, K, h, w)`` probabilities; tiling, TTA and
the segmenter take any such callable, so PyTorch and ONNX Runtime models share one pipeline.
:data:`BACKENDS` names the registered engines; ``"auto"`` picks a model's fastest form
(:func:`resolve_backend`). PyTorch is imported only by the ``torch`` backend, so a command that
runs an ONNX form starts without it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from nucleiseg.bundle import ModelBundle, file_hash, onnx_precision

if TYPE_CHECKING:
    import torch

__all__ = ["AUTO", "BACKENDS", "LoadedPredictor", "Predictor", "build_predictor", "register_backend", "resolve_backend", "torch_predictor"]

Predictor = Callable[[np.ndarray], np.ndarray]
#: The backend name that picks a model's fastest form.
AUTO = "auto"
#: The order ``auto`` tries a model folder's forms in: int8 ONNX (measured within 0.005 of the
#: PyTorch score on the DSB validation split and the fastest on a CPU, see docs/speed.md), fp32
#: ONNX, then PyTorch.
AUTO_ORDER = ("onnx-int8", "onnx", "torch")


@dataclass
class LoadedPredictor:
    """A backend's predictor with what the segmenter records about it.

    Attributes
    ----------
    predict : Predictor
    stride : int
        Side multiple the network needs.
    name : str
        Model name as written in sidecars (ONNX forms add ``-onnx-<precision>``).
    model_hash : str
        SHA-256 of the file the predictor runs (weights or ONNX file).
    backend : str
        The backend that built it.
    """

    predict: Predictor
    stride: int
    name: str
    model_hash: str
    backend: str


Builder = Callable[[ModelBundle, str, "int | None"], LoadedPredictor]
_REGISTRY: dict[str, Builder] = {}


def register_backend(name: str, builder: Builder) -> None:
    """Register ``builder(bundle, device, threads) -> LoadedPredictor`` under ``name``."""
    _REGISTRY[name] = builder


def torch_predictor(model: torch.nn.Module, device: str | torch.device = "cpu") -> Predictor:
    """Wrap a PyTorch model returning logits into a numpy probability predictor.

    The model is put in eval mode and channels-last memory format; calls run under
    ``torch.inference_mode`` and apply a sigmoid to the logits.
    """
    import torch

    model.eval()
    device = torch.device(device)
    model.to(device=device, memory_format=torch.channels_last)  # measured 10-40 % faster on CPU

    def predict(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(device)
            x = x.contiguous(memory_format=torch.channels_last)
            return np.ascontiguousarray(torch.sigmoid(model(x)).float().cpu().numpy())

    return predict


def _build_torch(bundle: ModelBundle, device: str, threads: int | None) -> LoadedPredictor:
    import torch

    from nucleiseg.training.checkpoint import load_model

    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)  # process-wide in PyTorch
    model = load_model(bundle.config.model, bundle.weights_file())
    return LoadedPredictor(torch_predictor(model, device), int(getattr(model, "stride", 32)), bundle.name, bundle.weights_hash, "torch")


def _onnx_builder(backend: str) -> Builder:
    def build(bundle: ModelBundle, device: str, threads: int | None) -> LoadedPredictor:
        from nucleiseg.export.runtime import META, onnx_predictor

        if device != "cpu":
            raise ValueError(f"backend {backend} runs on the CPU only (got device {device!r}); use --backend torch")
        path = bundle.onnx_file(onnx_precision(backend))
        predictor = onnx_predictor(path, threads)
        precision = predictor.metadata.get(META["precision"], "fp32")
        return LoadedPredictor(predictor, predictor.stride, f"{bundle.name}-onnx-{precision}", file_hash(path), backend)

    return build


register_backend("torch", _build_torch)
for _name in ("onnx", "onnx-fp16", "onnx-int8"):
    register_backend(_name, _onnx_builder(_name))
#: Backend names accepted by :func:`build_predictor` and the CLI's ``--backend``.
BACKENDS: tuple[str, ...] = (AUTO, *_REGISTRY)


def resolve_backend(bundle: ModelBundle, backend: str = AUTO, device: str = "cpu") -> str:
    """The registered backend ``backend`` means for ``bundle``: ``auto`` picks its fastest form.

    ``auto`` is PyTorch on a non-CPU device; on the CPU the first form of :data:`AUTO_ORDER` the
    model has (a lone ``.onnx`` file: ONNX Runtime).
    """
    if backend != AUTO:
        if backend not in _REGISTRY:
            raise ValueError(f"unknown backend {backend!r} (choose {', '.join((AUTO, *_REGISTRY))})")
        return backend
    if device != "cpu":
        return "torch"
    if bundle.folder is None and bundle.onnx:
        return "onnx"
    for name in AUTO_ORDER:
        if name == "torch" or onnx_precision(name) in bundle.onnx:
            return name
    return "torch"


def build_predictor(bundle: ModelBundle, backend: str = AUTO, device: str = "cpu", threads: int | None = None) -> LoadedPredictor:
    """Build the predictor of ``bundle`` for ``backend`` (see :data:`BACKENDS`)."""
    name = resolve_backend(bundle, backend, device)
    return _REGISTRY[name](bundle, device, threads)
