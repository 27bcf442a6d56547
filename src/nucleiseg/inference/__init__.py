"""Inference: sliding-window prediction, test-time augmentation and rescaling."""

from __future__ import annotations

from nucleiseg.inference.scale import rescale_image, resize_labels, resize_probabilities, scale_factor
from nucleiseg.inference.tiling import Predictor, blend_window, predict_tiled
from nucleiseg.inference.tta import (
    DIHEDRAL,
    apply_dihedral,
    invert_dihedral,
    multiscale_predictor,
    tta_predictor,
)

__all__ = [
    "DIHEDRAL",
    "Predictor",
    "apply_dihedral",
    "blend_window",
    "invert_dihedral",
    "multiscale_predictor",
    "predict_tiled",
    "rescale_image",
    "resize_labels",
    "resize_probabilities",
    "scale_factor",
    "tta_predictor",
]
