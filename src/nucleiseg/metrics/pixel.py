"""Pixel-level (semantic) agreement between two label images or masks.

These ignore object identity: every pixel with a label > 0 is foreground. They complement the
object-level DSB score in :mod:`nucleiseg.metrics.matching`, and reproduce the "mean IoU" that
the seed U-Net work reported: the average of the background IoU and the foreground IoU.

Empty cases: an IoU or Dice whose union is empty (both images have no foreground, or both have
no background for the background IoU) is 1.0, since the two images agree perfectly on that
class. So two empty images give ``foreground_iou = dice = mean_iou_seed = 1.0``, and an empty
prediction of an image with nuclei gives ``foreground_iou = dice = 0.0``.
"""

from __future__ import annotations

import numpy as np

from nucleiseg.counting import chunks

__all__ = ["pixel_metrics"]


def _iou(inter: int, union: int) -> float:
    """Intersection over union, 1.0 when the union is empty."""
    return inter / union if union else 1.0


def pixel_metrics(true: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Foreground IoU, Dice, seed-style mean IoU and pixel accuracy.

    Parameters
    ----------
    true, pred : np.ndarray
        Label images or masks of the same shape; values > 0 are foreground.

    Returns
    -------
    dict of str to float
        ``foreground_iou`` (Jaccard of the foreground masks), ``dice`` (``2|A∩B| / (|A|+|B|)``),
        ``mean_iou_seed`` (mean of background and foreground IoU), ``pixel_accuracy``
        (fraction of pixels with the same foreground/background class).

    Raises
    ------
    ValueError
        If the inputs are not numeric/bool arrays of the same, non-empty shape.

    Examples
    --------
    >>> import numpy as np
    >>> a = np.zeros((4, 4), np.int32); a[:2] = 1
    >>> pixel_metrics(a, a)["dice"]
    1.0
    """
    if not isinstance(true, np.ndarray) or not isinstance(pred, np.ndarray):
        raise ValueError("true and pred must be numpy arrays")
    if true.shape != pred.shape:
        raise ValueError(f"shape mismatch: true {true.shape} vs pred {pred.shape}")
    if true.size == 0:
        raise ValueError("pixel_metrics needs non-empty arrays")
    for name, arr in (("true", true), ("pred", pred)):
        if not (arr.dtype == bool or np.issubdtype(arr.dtype, np.number)):
            raise ValueError(f"{name}: expected a numeric or bool array, got {arr.dtype}")
    n, n_t, n_p, inter = int(true.size), 0, 0, 0
    for t, p in zip(chunks(true.reshape(-1), None), chunks(pred.reshape(-1), None), strict=True):  # not 3 whole-image masks
        t, p = t > 0, p > 0
        n_t += int(np.count_nonzero(t))
        n_p += int(np.count_nonzero(p))
        inter += int(np.count_nonzero(t & p))
    union = n_t + n_p - inter
    fg_iou = _iou(inter, union)
    bg_iou = _iou(n - union, n - inter)  # background intersection / background union
    return {
        "foreground_iou": fg_iou,
        "dice": 2 * inter / (n_t + n_p) if (n_t + n_p) else 1.0,
        "mean_iou_seed": 0.5 * (fg_iou + bg_iou),
        "pixel_accuracy": (inter + n - union) / n,
    }
