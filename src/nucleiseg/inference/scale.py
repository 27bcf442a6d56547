"""Rescaling images so nuclei have the size the model was trained on, and mapping results back."""

from __future__ import annotations

import math

import numpy as np
from skimage.transform import resize

__all__ = ["rescale_image", "resize_labels", "resize_probabilities", "scale_factor"]


def _check_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    """Validate an ``(H, W)`` target shape."""
    if len(shape) != 2 or min(int(s) for s in shape) < 1:
        raise ValueError(f"shape must be (H, W) with positive sides, got {tuple(shape)}")
    return int(shape[0]), int(shape[1])


def rescale_image(image_hwc: np.ndarray, factor: float) -> np.ndarray:
    """Zoom an ``(H, W)`` or ``(H, W, C)`` image by ``factor`` (bilinear, anti-aliased when shrinking).

    Parameters
    ----------
    image_hwc : np.ndarray
        Image of any numeric dtype.
    factor : float
        Positive zoom; the output sides are ``round(side * factor)`` (at least 1).

    Returns
    -------
    np.ndarray
        The resized image. Float inputs keep their dtype; integer inputs are rounded, clipped
        to their dtype's range and keep their dtype.
    """
    image = np.asarray(image_hwc)
    if image.ndim not in (2, 3) or image.size == 0:
        raise ValueError(f"image must be a non-empty (H, W) or (H, W, C) array, got shape {image.shape}")
    if not math.isfinite(factor) or factor <= 0:
        raise ValueError(f"factor must be a positive number, got {factor}")
    shape = (max(1, round(image.shape[0] * factor)), max(1, round(image.shape[1] * factor)))
    if shape == image.shape[:2]:
        return image.copy()
    out = resize(
        image.astype(np.float32, copy=False) if image.dtype.kind != "f" else image,
        shape + image.shape[2:],
        order=1,
        anti_aliasing=factor < 1.0,
        preserve_range=True,
    )
    if image.dtype.kind in "iub":
        info = np.iinfo(image.dtype) if image.dtype.kind != "b" else None
        out = np.rint(out)
        if info is not None:
            out = np.clip(out, info.min, info.max)
    return out.astype(image.dtype, copy=False)


def resize_probabilities(probs: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of ``(K, h, w)`` probabilities to ``(K, *shape)`` (anti-aliased when shrinking).

    Returns float32 values clipped to 0..1.
    """
    probs = np.asarray(probs)
    if probs.ndim != 3 or probs.size == 0:
        raise ValueError(f"probs must be a non-empty (K, H, W) array, got shape {probs.shape}")
    shape = _check_shape(tuple(shape))
    if probs.shape[1:] == shape:
        return probs.astype(np.float32)
    shrinking = shape[0] < probs.shape[1] or shape[1] < probs.shape[2]
    out = resize(
        probs.astype(np.float32, copy=False),
        (probs.shape[0], *shape),
        order=1,
        anti_aliasing=shrinking,
        preserve_range=True,
    )
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def resize_labels(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an ``(H, W)`` label image; ids and dtype are kept.

    Shrinking may drop objects smaller than a pixel of the output, but never invents an id.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.dtype.kind not in "iub":
        raise ValueError(f"labels must be a 2-D integer array, got shape {labels.shape} dtype {labels.dtype}")
    shape = _check_shape(tuple(shape))
    if labels.shape == shape:
        return labels.copy()
    out = resize(labels, shape, order=0, preserve_range=True, anti_aliasing=False)
    return out.astype(labels.dtype)


def scale_factor(
    estimated_diameter: float,
    target_diameter: float,
    min_factor: float = 0.25,
    max_factor: float = 4.0,
) -> float:
    """Zoom that brings nuclei of ``estimated_diameter`` to ``target_diameter``, clamped.

    Returns 1.0 when the estimate is missing (NaN, infinite or not positive).
    """
    if not (math.isfinite(target_diameter) and target_diameter > 0):
        raise ValueError(f"target_diameter must be a positive number, got {target_diameter}")
    if not 0 < min_factor <= max_factor:
        raise ValueError(f"need 0 < min_factor <= max_factor, got {min_factor}, {max_factor}")
    if estimated_diameter is None or not math.isfinite(estimated_diameter) or estimated_diameter <= 0:
        return 1.0
    return float(min(max(target_diameter / estimated_diameter, min_factor), max_factor))
