"""Inference: sliding-window prediction, test-time augmentation and rescaling.

Names are imported on first use (PEP 562), so importing one module of the package stays cheap.
"""

from __future__ import annotations

from nucleiseg._lazy import lazy_exports

_EXPORTS = {
    "rescale_image": "scale",
    "resize_labels": "scale",
    "resize_probabilities": "scale",
    "scale_factor": "scale",
    "Predictor": "tiling",
    "axis_windows": "tiling",
    "blend_window": "tiling",
    "predict_tiled": "tiling",
    "DIHEDRAL": "tta",
    "apply_dihedral": "tta",
    "invert_dihedral": "tta",
    "multiscale_predictor": "tta",
    "tta_predictor": "tta",
}

__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
