"""Post-processing: probabilities to instance labels, the classical baseline and tuning."""

from __future__ import annotations

from nucleiseg.postprocess.classical import classical_segment
from nucleiseg.postprocess.tuning import default_grid, tune_postprocess
from nucleiseg.postprocess.watershed import (
    estimate_diameter,
    foreground_mask,
    labels_from_mask,
    probabilities_to_labels,
    remove_small_labels,
)

__all__ = [
    "classical_segment",
    "default_grid",
    "estimate_diameter",
    "foreground_mask",
    "labels_from_mask",
    "probabilities_to_labels",
    "remove_small_labels",
    "tune_postprocess",
]
