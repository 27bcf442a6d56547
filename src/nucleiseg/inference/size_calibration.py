"""What is chosen after the size regression is fitted: its log offset and its gate.

The log offset (:attr:`SizeModel.log_offset`, :func:`calibrate_offset`) is chosen out of fold
on the training samples; the gate (:meth:`SizeModel.gate_diameter`, :func:`choose_gate`) on the
validation samples, as post-processing thresholds are. Both are judged by the share of
estimates within +-30 % of the truth (:func:`estimate_summary`, :func:`share_within`).

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

from nucleiseg.inference.size import SizeModel, design

__all__ = ["GATE_BANDS", "GATE_CONFIDENCE", "GATE_OBJECTS", "OFFSETS", "calibrate_offset", "choose_gate", "estimate_summary",
           "group_folds", "share_within"]

#: Log offsets tried, ``-0.10 .. +0.10`` in steps of 0.005.
OFFSETS = np.round(np.arange(-0.10, 0.10 + 1e-9, 0.005), 3)
#: Relative error an estimate may have and count as right (issue 14's figure).
TOLERANCE = 0.30


def _within(ratio: np.ndarray, tolerance: float = TOLERANCE) -> np.ndarray:
    """Whether each ``estimate / truth`` ratio is within ``tolerance`` of 1."""
    return np.abs(np.asarray(ratio, np.float64) - 1.0) <= tolerance


def share_within(log_errors: np.ndarray, offset: float = 0.0, tolerance: float = TOLERANCE) -> float:
    """Share of estimates within ``tolerance`` of the truth after adding ``offset`` to their log errors."""
    return float(np.mean(_within(np.exp(np.asarray(log_errors, np.float64) + offset), tolerance)))


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


#: Gate settings :func:`choose_gate` tries: minimum marker objects x minimum confidence x band.
GATE_OBJECTS = (5, 8, 12, 20)
GATE_CONFIDENCE = (0.85, 0.9, 0.93, 0.95)
GATE_BANDS = (1.3, 1.5, 2.0)


def choose_gate(model: SizeModel, stats: np.ndarray, y: np.ndarray, slack: float = 0.0, inside: float = 0.95,
                max_band: float = 1.5) -> dict[str, float]:
    """Pick the gate (:meth:`SizeModel.gate_diameter`) that skips the coarse views most often
    without costing accuracy on the given samples (the validation images, :func:`nucleiseg.inference.size_fit.validation_samples`).

    Every combination of :data:`GATE_OBJECTS` x :data:`GATE_CONFIDENCE` x the
    :data:`GATE_BANDS` up to ``max_band`` (the segmenter's ``rescale_tolerance``, so that a
    gated image is always segmented at native scale) is tried. A gate qualifies when the samples
    it lets through are within +-30 % of the truth at least ``inside`` of the time and the
    combined estimator (the gate's diameter where it opens, the regression elsewhere) loses at
    most ``slack`` of the regression's share within +-30 %. Of the qualifying gates the one that
    opens most often is taken (ties: the first tried, bands, objects and confidences ascending).

    Parameters
    ----------
    model : SizeModel
        The fitted regression (its gate fields are set in place to the choice).
    stats : np.ndarray
        ``(n, zooms, stats)`` probe statistics.
    y : np.ndarray
        ``(n,)`` true log diameters.

    Returns
    -------
    dict
        The chosen ``gate_objects``, ``gate_confidence``, ``gate_band``, the share of samples it opens for, and
        the within-30 % shares of the regression alone and combined (``gate_objects`` 0: none
        qualified, the gate stays off).
    """
    x = np.stack([design(s, model.zooms, model.target) for s in stats])
    reg = np.exp(model.predict_log(x))
    true = np.exp(y)
    base = float(np.mean(_within(reg / true)))
    best: dict[str, float] = {"gate_objects": 0, "gate_confidence": 1.0, "gate_band": model.gate_band, "opened": 0.0,
                              "within_30pct_regression": round(base, 4)}
    settings = [(o, c, b) for b in GATE_BANDS if b <= max_band + 1e-9 for o in GATE_OBJECTS for c in GATE_CONFIDENCE]
    for objects, conf, band in settings:
        model.gate_objects, model.gate_confidence, model.gate_band = objects, conf, band
        gated = np.array([np.nan if (d := model.gate_diameter(s[0])) is None else d for s in stats])
        opened = np.isfinite(gated)
        if not opened.any():
            continue
        ok_inside = float(np.mean(_within(gated[opened] / true[opened])))
        combined = float(np.mean(_within(np.where(opened, gated, reg) / true)))
        share = float(opened.mean())
        if ok_inside >= inside and combined >= base - slack and share > best["opened"]:
            best = {"gate_objects": objects, "gate_confidence": conf, "gate_band": band, "opened": round(share, 4),
                    "within_30pct_regression": round(base, 4), "within_30pct_combined": round(combined, 4),
                    "within_30pct_inside": round(ok_inside, 4)}
    model.gate_objects, model.gate_confidence, model.gate_band = int(best["gate_objects"]), float(best["gate_confidence"]), float(best["gate_band"])
    return best


def estimate_summary(est: Sequence[float] | np.ndarray, true: Sequence[float] | np.ndarray) -> dict[str, float | int]:
    """Share of estimates within :data:`TOLERANCE` of the truth and median ``|log(est/true)|``.

    A missing estimate (NaN or not positive) counts as a miss and as an infinite error.
    """
    e, t = np.asarray(est, np.float64), np.asarray(true, np.float64)
    ok = np.isfinite(e) & (e > 0)
    err = np.full(e.shape, np.inf)
    err[ok] = np.abs(np.log(e[ok] / t[ok]))
    within = np.zeros(e.shape, bool)
    within[ok] = _within(e[ok] / t[ok])
    return {"n": int(e.size), "within_30pct": round(float(within.mean()), 4), "median_abs_log": round(float(np.median(err)), 4),
            "missing": int((~ok).sum())}
