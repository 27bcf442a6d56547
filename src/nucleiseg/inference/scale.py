"""Rescaling images so nuclei have the size the model was trained on, and mapping results back."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["rescale_image", "resize_labels", "resize_probabilities", "scale_factor", "shrink_box"]


def _resize_float32(planes: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize float32 ``(H, W, C)`` planes with Pillow, which releases the GIL and is 4-6x faster
    than scikit-image's spline path (measured on 520x696x3: 16 vs 64 ms at x0.5, 52 vs 332 ms at x1.5).

    Shrinking uses the bilinear (triangle) filter, widened so it is anti-aliased. Enlarging uses
    Lanczos (3 lobes): it keeps nuclear edges sharper than bilinear interpolation, and on the
    validation split it scored higher (0.5636 vs 0.5608 native; 0.4821 vs 0.4725 with the images
    shrunk x0.5, which the size estimate zooms back up). Its overshoot is not clipped here.
    """
    from PIL import Image

    out = np.empty(shape + planes.shape[2:], np.float32)
    size = (shape[1], shape[0])
    method = Image.LANCZOS if shape[0] * shape[1] > planes.shape[0] * planes.shape[1] else Image.BILINEAR
    first = planes[..., 0]
    if all(np.array_equal(first, planes[..., c]) for c in range(1, planes.shape[2])):
        # A gray image fed to a colour network: one resize serves every (identical) channel.
        out[...] = np.asarray(Image.fromarray(np.ascontiguousarray(first), mode="F").resize(size, method))[..., None]
        return out
    for c in range(planes.shape[2]):
        out[..., c] = np.asarray(Image.fromarray(np.ascontiguousarray(planes[..., c]), mode="F").resize(size, method))
    return out


def _check_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    """Validate an ``(H, W)`` target shape."""
    if len(shape) != 2 or min(int(s) for s in shape) < 1:
        raise ValueError(f"shape must be (H, W) with positive sides, got {tuple(shape)}")
    return int(shape[0]), int(shape[1])


def rescale_image(image_hwc: np.ndarray, factor: float) -> np.ndarray:
    """Zoom an ``(H, W)`` or ``(H, W, C)`` image by ``factor``.

    float32 images (network inputs) are enlarged with Lanczos and shrunk bilinearly (anti-aliased);
    other dtypes are resized bilinearly with scikit-image (anti-aliased when shrinking).

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
    if image.dtype == np.float32:  # network inputs: the fast path (other dtypes keep scikit-image's exact path)
        return _resize_float32(image if image.ndim == 3 else image[:, :, None], shape).reshape(shape + image.shape[2:])
    from skimage.transform import resize  # imported here: the segmenting path never needs it

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


def shrink_box(planes: np.ndarray, k: int) -> np.ndarray:
    """Shrink float32 ``(C, H, W)`` planes by the whole factor ``k`` into ``(C, H // k, W // k)``.

    Each output pixel is the mean of a ``k x k`` block (Pillow's ``Image.reduce``); the last
    ``H % k`` rows and ``W % k`` columns are dropped, so the zoom is exactly ``1 / k`` (and
    shrinking by ``a`` then ``b`` equals shrinking by ``a * b``). About 3x cheaper than
    :func:`rescale_image` at 256 x 256: the size probe's coarse views use it.
    """
    from PIL import Image

    planes = np.asarray(planes, np.float32)
    if planes.ndim != 3 or int(k) != k or k < 1 or min(planes.shape[1:]) < k:
        raise ValueError(f"need (C, H, W) planes with sides >= k and a whole k >= 1, got shape {planes.shape}, k {k}")
    k = int(k)
    h, w = planes.shape[1] // k, planes.shape[2] // k
    if k == 1:
        return np.ascontiguousarray(planes)
    out = np.empty((planes.shape[0], h, w), np.float32)
    for c in range(planes.shape[0]):
        out[c] = np.asarray(Image.fromarray(np.ascontiguousarray(planes[c, : h * k, : w * k])).reduce(k))
    return out


def resize_probabilities(probs: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize ``(K, h, w)`` probabilities to ``(K, *shape)``: Lanczos when enlarging, bilinear and
    anti-aliased when shrinking.

    Returns float32 values clipped to 0..1.
    """
    probs = np.asarray(probs)
    if probs.ndim != 3 or probs.size == 0:
        raise ValueError(f"probs must be a non-empty (K, H, W) array, got shape {probs.shape}")
    shape = _check_shape(tuple(shape))
    if probs.shape[1:] == shape:
        return probs.astype(np.float32)
    out = _resize_float32(np.asarray(probs, np.float32).transpose(1, 2, 0), shape).transpose(2, 0, 1)
    return np.clip(out, 0.0, 1.0, out=np.ascontiguousarray(out))


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
    from skimage.transform import resize

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
