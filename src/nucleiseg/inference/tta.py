"""Test-time augmentation: wrap a batch predictor so it averages over flips, rotations and scales.

Each wrapper is again a predictor ``(B, C, h, w) float32 -> (B, K, h, w)``, so it plugs into
:func:`nucleiseg.inference.tiling.predict_tiled` unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from nucleiseg.inference.tiling import Predictor

__all__ = ["DIHEDRAL", "apply_dihedral", "invert_dihedral", "multiscale_predictor", "tta_predictor"]

# The 8 symmetries of the square: k % 4 quarter turns, then a left-right flip when k >= 4.
DIHEDRAL: tuple[int, ...] = tuple(range(8))


def _check(batch: np.ndarray, k: int) -> None:
    """Validate a ``(B, C, H, W)`` batch and a transform index."""
    if np.ndim(batch) != 4:
        raise ValueError(f"batch must be (B, C, H, W), got shape {np.shape(batch)}")
    if k not in DIHEDRAL:
        raise ValueError(f"dihedral transform index must be in 0..7, got {k}")


def apply_dihedral(batch: np.ndarray, k: int) -> np.ndarray:
    """Rotate a ``(B, C, H, W)`` batch by ``k % 4`` quarter turns, then flip it left-right if ``k >= 4``.

    The result is C-contiguous (torch's ``from_numpy`` rejects negative strides).
    """
    _check(batch, k)
    out = np.rot90(batch, k % 4, axes=(-2, -1))
    if k >= 4:
        out = out[..., ::-1]
    return np.ascontiguousarray(out)


def invert_dihedral(batch: np.ndarray, k: int) -> np.ndarray:
    """Undo :func:`apply_dihedral` with the same ``k``."""
    _check(batch, k)
    out = batch[..., ::-1] if k >= 4 else batch
    out = np.rot90(out, -(k % 4), axes=(-2, -1))
    return np.ascontiguousarray(out)


def tta_predictor(predictor: Predictor, transforms: Iterable[int] = DIHEDRAL) -> Predictor:
    """Wrap ``predictor`` to average its probabilities over dihedral transforms.

    Quarter turns swap height and width, so tiles must have both sides divisible by the model
    stride (:func:`~nucleiseg.inference.tiling.predict_tiled` guarantees it).

    Parameters
    ----------
    predictor : callable
        ``(B, C, h, w) float32 -> (B, K, h, w)`` probabilities.
    transforms : iterable of int
        Indices into :data:`DIHEDRAL`; all 8 by default.
    """
    ks = list(transforms)
    if not ks:
        raise ValueError("tta_predictor needs at least one transform")
    for k in ks:
        if k not in DIHEDRAL:
            raise ValueError(f"dihedral transform index must be in 0..7, got {k}")

    def predict(batch: np.ndarray) -> np.ndarray:
        total: np.ndarray | None = None
        for k in ks:
            pred = invert_dihedral(np.asarray(predictor(apply_dihedral(batch, k))), k).astype(np.float32)
            total = pred if total is None else total + pred
        assert total is not None
        return total / len(ks)

    return predict


def _resize_batch(batch: np.ndarray, shape: tuple[int, int], order: int) -> np.ndarray:
    """Bilinear (``order=1``) resize of a ``(B, C, h, w)`` batch to ``(B, C, *shape)``, float32."""
    from skimage.transform import resize  # imported here: only multi-scale prediction needs it (its import costs ~0.15 s)

    b, c, h, w = batch.shape
    if (h, w) == shape:
        return batch.astype(np.float32, copy=False)
    flat = np.moveaxis(batch.reshape(b * c, h, w), 0, -1)
    shrinking = shape[0] < h or shape[1] < w
    out = resize(flat, (*shape, b * c), order=order, anti_aliasing=shrinking, preserve_range=True)
    return np.moveaxis(out, -1, 0).reshape(b, c, *shape).astype(np.float32)


def multiscale_predictor(predictor: Predictor, scales: Sequence[float], stride: int = 32) -> Predictor:
    """Wrap ``predictor`` to average probabilities predicted at several image scales.

    For each scale the batch is resized (bilinear, anti-aliased when shrinking) so that both
    sides are ``side * scale`` rounded up to a multiple of ``stride``, predicted, and the
    probabilities are resized back to the input size.

    Parameters
    ----------
    predictor : callable
        ``(B, C, h, w) float32 -> (B, K, h, w)`` probabilities.
    scales : sequence of float
        Positive zoom factors, e.g. ``(0.75, 1.0, 1.25)``.
    stride : int
        Resized sides are multiples of this.
    """
    scales = [float(s) for s in scales]
    if not scales or any(not np.isfinite(s) or s <= 0 for s in scales):
        raise ValueError(f"scales must be a non-empty list of positive numbers, got {scales}")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")

    def predict(batch: np.ndarray) -> np.ndarray:
        batch = np.asarray(batch, np.float32)
        if batch.ndim != 4:
            raise ValueError(f"batch must be (B, C, H, W), got shape {batch.shape}")
        h, w = batch.shape[2:]
        total: np.ndarray | None = None
        for s in scales:
            shape = (
                max(stride, -(-round(h * s) // stride) * stride),
                max(stride, -(-round(w * s) // stride) * stride),
            )
            pred = np.asarray(predictor(_resize_batch(batch, shape, order=1)))
            pred = _resize_batch(pred, (h, w), order=1)
            total = pred if total is None else total + pred
        assert total is not None
        return total / len(scales)

    return predict
