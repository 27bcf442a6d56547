"""Post-processing: probabilities to instance labels, the classical baseline and tuning.

Names are imported on first use (PEP 562), so segmenting never imports the tuning grid's pandas.
"""

from __future__ import annotations

from nucleiseg._lazy import lazy_exports

_EXPORTS = {
    "classical_segment": "classical",
    "default_grid": "tuning",
    "tune_postprocess": "tuning",
    "estimate_diameter": "watershed",
    "foreground_mask": "watershed",
    "labels_from_mask": "watershed",
    "probabilities_to_labels": "watershed",
    "remove_small_labels": "watershed",
}

__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
