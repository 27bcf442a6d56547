"""Validation with the full instance pipeline: probabilities, watershed, matching."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch
from tqdm import tqdm

from nucleiseg.config import InferConfig, ModelBundleConfig, PostprocessConfig
from nucleiseg.inference.predictors import torch_predictor
from nucleiseg.inference.segmenter import Segmenter
from nucleiseg.metrics import evaluate_pairs
from nucleiseg.postprocess import probabilities_to_labels
from nucleiseg.training.data import TrainingSample


def predict_samples(
    model: torch.nn.Module,
    samples: Sequence[TrainingSample],
    infer: InferConfig,
    device: str | torch.device = "cpu",
    tta: bool = False,
    progress: bool = False,
) -> list[np.ndarray]:
    """Probabilities ``(K, H, W)`` for each normalised sample at native resolution.

    The in-memory model runs through :meth:`Segmenter.probabilities`, the stage every user
    path runs (tiling, TTA), so validation scores what users get.
    """
    segmenter = Segmenter(ModelBundleConfig(infer=infer), torch_predictor(model, device), int(getattr(model, "stride", 32)), "validation")
    settings = replace(infer, tta=tta, scales=[1.0])
    return [
        segmenter.probabilities(sample.image.astype(np.float32), settings)
        for sample in tqdm(samples, desc="predict", disable=not progress, leave=False)
    ]


def score_probabilities(
    probabilities: Sequence[np.ndarray],
    samples: Sequence[TrainingSample],
    post: PostprocessConfig,
) -> dict[str, float]:
    """Competition score and pixel metrics of post-processed probabilities against the labels."""
    items = ((s.id, s.labels, probabilities_to_labels(p, post)) for s, p in zip(samples, probabilities, strict=True))
    report = evaluate_pairs(items)
    summary = report.summary
    return {
        "val_score": float(summary["score_macro"]),
        "val_ap50": float(summary["ap50"]),
        "val_f1": float(summary["f1_50"]),
        "val_mean_iou_seed": float(summary["mean_iou_seed"]),
        "val_foreground_iou": float(summary["foreground_iou"]),
    }


def validate(
    model: torch.nn.Module,
    samples: Sequence[TrainingSample],
    infer: InferConfig,
    post: PostprocessConfig,
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    """Run the whole instance pipeline over the validation samples and score it."""
    probs = predict_samples(model, samples, infer, device)
    return score_probabilities(probs, samples, post)
