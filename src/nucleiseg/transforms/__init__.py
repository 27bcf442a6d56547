"""Image normalisation, training targets and augmentation.

Names are imported on first use (PEP 562), so inference never imports albumentations.
``NO_ALBUMENTATIONS_UPDATE`` is set before albumentations is imported so it never checks
online for a newer version.
"""

from __future__ import annotations

import os

from nucleiseg._lazy import lazy_exports

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

_EXPORTS = {
    "build_augment": "augment",
    "patchify": "augment",
    "image_style_features": "normalize",
    "is_bright_background": "normalize",
    "normalize_image": "normalize",
    "style_clusters": "normalize",
    "contour_map": "targets",
    "gap_weights": "targets",
    "make_targets": "targets",
    "separation_map": "targets",
}

__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
