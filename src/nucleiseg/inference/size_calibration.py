"""Out-of-fold calibration of the size regression's log offset (:attr:`SizeModel.log_offset`).

The regression (:func:`nucleiseg.inference.size_fit.fit_mlp`) fits ``log(diameter)`` with a
robust loss, so its errors are centred on zero in log space. An estimate counts as right when it
is within +-30 % of the truth, i.e. when its log error lies in ``log 0.7 .. log 1.3``
(``-0.357 .. +0.262``), a band centred on ``-0.047``: with errors spread evenly around zero,
shifting every estimate down a little puts more of them inside. How far is measured, not
assumed: :func:`calibrate_offset` refits the regression on folds of the *training* samples
(grouped by image, so zoomed copies of one image never sit on both sides), collects the
out-of-fold log errors, and takes the offset that puts the most of them within +-30 % (averaged
over neighbouring offsets, so one sample's flip does not decide). The validation images are not
used.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

__all__ = ["OFFSETS", "calibrate_offset", "group_folds", "share_within"]

#: Log offsets tried, ``-0.10 .. +0.10`` in steps of 0.005.
OFFSETS = np.round(np.arange(-0.10, 0.10 + 1e-9, 0.005), 3)
#: Relative error an estimate may have and count as right (issue 14's figure).
TOLERANCE = 0.30


def share_within(log_errors: np.ndarray, offset: float = 0.0, tolerance: float = TOLERANCE) -> float:
    """Share of estimates within ``tolerance`` of the truth after adding ``offset`` to their log errors."""
    return float(np.mean(np.abs(np.exp(np.asarray(log_errors, np.float64) + offset) - 1.0) <= tolerance))


def group_folds(groups: Sequence[str], folds: int, seed: int) -> np.ndarray:
    """Fold number per sample; all samples of one group (image) share a fold, groups shuffled by ``seed``."""
    keys = np.asarray(groups)
    unique = np.unique(keys)
    order = np.random.default_rng(seed).permutation(len(unique))
    fold_of = {str(unique[j]): i % folds for i, j in enumerate(order)}
    return np.array([fold_of[str(k)] for k in keys])


def calibrate_offset(
    x: np.ndarray, y: np.ndarray, groups: Sequence[str], fit: Callable[[np.ndarray, np.ndarray], object],
    folds: int = 5, seed: int = 0, repeats: int = 3, window: int = 2,
) -> dict[str, float | int]:
    """Choose the log offset from out-of-fold errors of the regression ``fit`` on training samples.

    Parameters
    ----------
    x, y : np.ndarray
        ``(n, d)`` design rows and ``(n,)`` true log diameters of the training samples.
    groups : sequence of str
        Image key of every sample (its zoomed copies share a fold).
    fit : callable
        ``(x, y) -> model`` with a ``predict_log(x)`` method (the fitting used for the real model).
    folds, seed, repeats : int
        Cross-validation folds, and ``repeats`` assignments of images to them (seeds ``seed``,
        ``seed + 1``, ...) whose out-of-fold errors are pooled.
    window : int
        The share of each offset is averaged with ``window`` neighbours on each side of
        :data:`OFFSETS` before the best is taken (ties: the offset nearest 0).

    Returns
    -------
    dict
        ``log_offset``, the out-of-fold shares within +-30 % without and with it, the median
        out-of-fold log error, ``folds`` and ``samples``.
    """
    pooled = []
    for r in range(repeats):
        fold = group_folds(groups, folds, seed + r)
        oof = np.empty(len(y), np.float64)
        for k in range(folds):
            model = fit(x[fold != k], y[fold != k])
            oof[fold == k] = model.predict_log(x[fold == k])  # type: ignore[attr-defined]
        pooled.append(oof - np.asarray(y, np.float64))
    errors = np.concatenate(pooled)
    shares = np.array([share_within(errors, float(o)) for o in OFFSETS])
    padded = np.pad(shares, window, mode="edge")
    smooth = np.convolve(padded, np.ones(2 * window + 1) / (2 * window + 1), mode="valid")
    best = max(range(len(OFFSETS)), key=lambda i: (round(float(smooth[i]), 9), -abs(float(OFFSETS[i]))))
    offset = float(OFFSETS[best])
    return {
        "log_offset": offset, "within_30pct_oof": round(share_within(errors), 4),
        "within_30pct_oof_calibrated": round(share_within(errors, offset), 4),
        "median_oof_log_error": round(float(np.median(errors)), 4), "folds": folds, "repeats": repeats,
        "samples": int(len(y)),
    }
