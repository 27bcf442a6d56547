"""Image normalisation, training targets and augmentation.

``NO_ALBUMENTATIONS_UPDATE`` is set before albumentations is imported so it never checks
online for a newer version.
"""

from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from nucleiseg.transforms.augment import build_augment, patchify  # noqa: E402
from nucleiseg.transforms.normalize import (  # noqa: E402
    image_style_features,
    is_bright_background,
    normalize_image,
    style_clusters,
)
from nucleiseg.transforms.targets import contour_map, gap_weights, make_targets, separation_map  # noqa: E402

__all__ = [
    "build_augment",
    "contour_map",
    "gap_weights",
    "image_style_features",
    "is_bright_background",
    "make_targets",
    "normalize_image",
    "patchify",
    "separation_map",
    "style_clusters",
]
