"""Object matching between two instance label images: the Data Science Bowl 2018 metric.

The Kaggle DSB 2018 score of one image is, for each IoU threshold ``t`` in
``0.50, 0.55, ..., 0.95``::

    score(t) = TP(t) / (TP(t) + FP(t) + FN(t))

averaged over the thresholds; the leaderboard averages that over images ("macro").
A true object and a predicted object match at ``t`` when their intersection over union is
*strictly* greater than ``t`` (Kaggle's ``iou > t``, ``strict=True``). StarDist's
``matching`` and Cellpose's ``average_precision`` use ``iou >= t`` (``strict=False``); the two
rules differ only for pairs whose IoU equals a threshold exactly, which happens for small,
pixel-aligned objects (e.g. a 10x30 box against the same box shifted by 10 pixels has IoU 0.5).

Because an IoU above 0.5 can only be reached by one partner on each side, counting the pairs
with ``iou > t`` is an exact one-to-one matching for ``t >= 0.5``. For lower thresholds, or for
``iou >= 0.5`` (two exact halves of a true object each have IoU 0.5), the candidate pairs can
conflict; they are then resolved by a maximum-cardinality assignment (ties broken by the larger
total IoU), as StarDist does, so every object is matched at most once.

Conventions for empty images (per threshold):

* no true and no predicted objects: score, precision, recall, F1, panoptic quality and mean
  matched IoU are 1.0 (the Kaggle convention: nothing to find and nothing falsely found is a
  perfect answer). Cellpose returns 0/0 (nan with a warning) here and StarDist returns 0 for
  some fields, so per-image numbers on empty images differ between tools;
* true empty but predictions present, or true objects but no predictions: 0.0 for every field.

A label image cannot represent overlapping ground-truth objects: each pixel has one id. The DSB
loader resolves overlapping masks before scoring (overlap pixels go to the first mask), so the
IoUs here are those of the resolved masks.

Label ids need not be consecutive (``5, 900, 70000`` works); they are relabelled internally to
``1..n`` and the original ids are kept in :attr:`ImageMatch.true_ids` / ``pred_ids``.
Supported dtypes: any integer type (int32, uint16, uint32, int64, ...) and bool.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from nucleiseg.counting import CHUNK, chunks, label_sizes
from nucleiseg.metrics.scores import ImageMatch, aggregate, aggregate_per_threshold

__all__ = [
    "DEFAULT_THRESHOLDS",
    "ImageMatch",
    "Overlaps",
    "aggregate",
    "aggregate_per_threshold",
    "competition_score",
    "iou_matrix",
    "match_labels",
    "overlaps",
]

#: The ten DSB 2018 IoU thresholds 0.50, 0.55, ..., 0.95 (rounded so 0.6 == 0.6 exactly).
DEFAULT_THRESHOLDS: np.ndarray = np.round(np.arange(0.5, 1.0, 0.05), 2)
DEFAULT_THRESHOLDS.setflags(write=False)

# Dense bincount tables are used while they stay this small relative to the image.
_DENSE_SLACK = 1 << 20


def _check_labels(name: str, labels: np.ndarray) -> np.ndarray:
    """Validate one label image and return it flat, in its own dtype (bool as ``uint8``)."""
    if not isinstance(labels, np.ndarray):
        raise ValueError(f"{name}: expected a numpy array, got {type(labels).__name__}")
    if labels.dtype == bool:
        return labels.ravel().view(np.uint8)
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{name}: label image must have an integer dtype, got {labels.dtype}")
    if labels.size and np.issubdtype(labels.dtype, np.signedinteger) and int(labels.min()) < 0:
        raise ValueError(f"{name}: label ids must be >= 0, found {int(labels.min())}")
    if labels.size and int(labels.max()) > np.iinfo(np.intp).max:
        raise ValueError(f"{name}: label id {int(labels.max())} does not fit in {np.dtype(np.intp)}")
    return labels.ravel()


def _merge_counts(keys: list[np.ndarray], counts: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct keys and their summed counts, from per-chunk ``np.unique`` results."""
    if len(keys) == 1:
        return keys[0], counts[0].astype(np.int64)
    merged, inverse = np.unique(np.concatenate(keys), return_inverse=True)
    total = np.zeros(merged.size, np.int64)
    np.add.at(total, inverse.reshape(-1), np.concatenate(counts))
    return merged, total


@dataclass(frozen=True)
class _Ids:
    """The objects of one label image: original ids (sorted), areas, and how to number them ``1..n``."""

    ids: np.ndarray
    area: np.ndarray
    lut: np.ndarray | None  #: id -> 1..n (0 -> 0); None when the ids are already 1..n or too large for a table

    def index(self, chunk: np.ndarray) -> np.ndarray:
        """``chunk`` (``intp`` ids) numbered ``1..n``, 0 for background."""
        if self.lut is not None:
            return self.lut[chunk]
        if self.ids.size == 0 or self.ids[-1] == self.ids.size:
            return chunk
        return np.searchsorted(np.concatenate([[0], self.ids]), chunk)


def _relabel(flat: np.ndarray) -> _Ids:
    """The objects of a flat label image (:class:`_Ids`), counted one chunk at a time."""
    top = int(flat.max()) if flat.size else 0
    if top == 0:
        empty = np.zeros(0, np.int64)
        return _Ids(empty, empty, None)
    if top <= 4 * flat.size + _DENSE_SLACK:
        counts = label_sizes(flat)
        ids = np.flatnonzero(counts[1:]) + 1
        lut = None
        if ids.size != top:
            lut = np.zeros(top + 1, np.intp)
            lut[ids] = np.arange(1, ids.size + 1)
        return _Ids(ids.astype(np.int64), counts[ids].astype(np.int64), lut)
    found = [np.unique(chunk, return_counts=True) for chunk in chunks(flat)]
    ids, counts = _merge_counts([f[0] for f in found], [f[1] for f in found])
    if ids[0] == 0:
        ids, counts = ids[1:], counts[1:]
    return _Ids(ids.astype(np.int64), counts, None)


def _pair_counts(t: np.ndarray, p: np.ndarray, true: _Ids, pred: _Ids) -> tuple[np.ndarray, np.ndarray]:
    """Combined indices ``true * n_pred + pred`` (0-based) of the overlapping pairs, and their pixels."""
    n_t, n_p = true.ids.size, pred.ids.size
    dense = n_t * n_p <= min(4 * t.size + _DENSE_SLACK, 4 * CHUNK)
    table = np.zeros(n_t * n_p if dense else 0, np.intp)
    keys, counts = [], []
    for tc, pc in zip(chunks(t), chunks(p), strict=True):
        tc, pc = true.index(tc), pred.index(pc)
        both = (tc > 0) & (pc > 0)
        key = (tc[both] - 1) * n_p + (pc[both] - 1)
        if dense:
            table += np.bincount(key, minlength=table.size)
        elif key.size:
            found = np.unique(key, return_counts=True)
            keys.append(found[0])
            counts.append(found[1])
    if dense:
        nonzero = np.flatnonzero(table)
        return nonzero, table[nonzero]
    if not keys:
        return np.zeros(0, np.intp), np.zeros(0, np.int64)
    return _merge_counts(keys, counts)


@dataclass(frozen=True, eq=False)
class Overlaps:
    """Every overlapping (true, predicted) pair of two label images, as a sparse table.

    Object indices are 0-based positions into ``true_ids`` / ``pred_ids`` (the original ids).
    """

    true_ids: np.ndarray
    pred_ids: np.ndarray
    true_area: np.ndarray
    pred_area: np.ndarray
    pair_true: np.ndarray
    pair_pred: np.ndarray
    intersection: np.ndarray
    iou: np.ndarray

    @property
    def n_true(self) -> int:
        """Number of true objects."""
        return int(self.true_ids.size)

    @property
    def n_pred(self) -> int:
        """Number of predicted objects."""
        return int(self.pred_ids.size)


def overlaps(true: np.ndarray, pred: np.ndarray) -> Overlaps:
    """Count the pixels shared by every pair of true and predicted objects.

    Pairs are counted with ``np.bincount`` over the combined index ``true * n_pred + pred`` of
    the pixels where both images are foreground (``np.unique`` when that table would be too
    large), one chunk of pixels at a time, so the cost does not grow with a loop over objects
    and the temporaries are the size of a chunk, not of the image.

    Parameters
    ----------
    true, pred : np.ndarray
        Label images of the same shape, 0 = background, any non-negative integer ids.

    Returns
    -------
    Overlaps
        Ids, areas and the overlapping pairs with their intersection and IoU.

    Raises
    ------
    ValueError
        If the shapes differ, a dtype is not integer/bool, or an id is negative.
    """
    if not isinstance(true, np.ndarray) or not isinstance(pred, np.ndarray):
        raise ValueError("true and pred must be numpy arrays")
    if true.shape != pred.shape:
        raise ValueError(f"shape mismatch: true {true.shape} vs pred {pred.shape}")
    t, p = _check_labels("true", true), _check_labels("pred", pred)
    ti, pi = _relabel(t), _relabel(p)
    if ti.ids.size == 0 or pi.ids.size == 0:
        nothing = np.zeros(0, np.int64)
        return Overlaps(ti.ids, pi.ids, ti.area, pi.area, nothing, nothing, nothing, np.zeros(0))
    nonzero, inter = _pair_counts(t, p, ti, pi)
    pair_true, pair_pred = np.divmod(nonzero.astype(np.int64), pi.ids.size)
    inter = inter.astype(np.int64)
    union = ti.area[pair_true] + pi.area[pair_pred] - inter
    return Overlaps(ti.ids, pi.ids, ti.area, pi.area, pair_true, pair_pred, inter, inter / union)


def iou_matrix(true: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Dense IoU matrix ``(n_true, n_pred)``; rows/columns follow the sorted original ids.

    Convenient for inspection of small images; :func:`overlaps` is the sparse equivalent.
    """
    ov = overlaps(true, pred)
    out = np.zeros((ov.n_true, ov.n_pred))
    out[ov.pair_true, ov.pair_pred] = ov.iou
    return out


def _match_at(ov: Overlaps, thr: float, strict: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One-to-one matches at one threshold: (true indices, pred indices, IoUs)."""
    ok = ov.iou > thr if strict else ov.iou >= thr
    ti, pi, val = ov.pair_true[ok], ov.pair_pred[ok], ov.iou[ok]
    if ti.size == 0 or (np.bincount(ti).max() <= 1 and np.bincount(pi).max() <= 1):
        return ti, pi, val
    rows, r_idx = np.unique(ti, return_inverse=True)
    cols, c_idx = np.unique(pi, return_inverse=True)
    score = np.zeros((rows.size, cols.size))
    score[r_idx, c_idx] = val
    allowed = np.zeros_like(score, dtype=bool)
    allowed[r_idx, c_idx] = True
    # Maximise the number of matches first; the IoU term (< 0.5 in total) only breaks ties.
    cost = -allowed.astype(float) - score / (2 * min(rows.size, cols.size))
    r, c = linear_sum_assignment(cost)
    keep = allowed[r, c]
    return rows[r[keep]], cols[c[keep]], score[r[keep], c[keep]]


def _check_thresholds(thresholds: Sequence[float] | np.ndarray) -> np.ndarray:
    """Validate thresholds: a non-empty 1-D sequence of values in [0, 1]."""
    thr = np.array(thresholds, dtype=float).reshape(-1)
    if thr.size == 0 or not np.all((thr >= 0) & (thr <= 1)):
        raise ValueError(f"thresholds must be a non-empty sequence of values in [0, 1], got {thresholds!r}")
    return thr


def match_labels(
    true: np.ndarray,
    pred: np.ndarray,
    thresholds: Sequence[float] | np.ndarray = DEFAULT_THRESHOLDS,
    strict: bool = True,
) -> ImageMatch:
    """Match true and predicted objects of one image at each IoU threshold.

    Parameters
    ----------
    true, pred : np.ndarray
        Label images of the same shape (0 = background, integer ids, not necessarily
        consecutive).
    thresholds : sequence of float
        IoU thresholds; the default is the DSB 2018 set 0.50..0.95.
    strict : bool
        ``True`` (default): a pair matches when ``iou > t`` (Kaggle). ``False``: ``iou >= t``
        (StarDist, Cellpose).

    Returns
    -------
    ImageMatch
        Counts per threshold and derived scores (see the module docstring for empty images).

    Examples
    --------
    >>> import numpy as np
    >>> a = np.zeros((8, 8), np.int32); a[2:6, 2:6] = 7
    >>> match_labels(a, a).competition_score
    1.0
    """
    thr = _check_thresholds(thresholds)
    ov = overlaps(true, pred)
    tp = np.array([_match_at(ov, float(t), strict)[0].size for t in thr], dtype=np.int64)
    ti, pi, iou50 = _match_at(ov, 0.5, strict)
    order = np.argsort(ti, kind="stable")
    pairs = np.stack([ov.true_ids[ti[order]], ov.pred_ids[pi[order]]], axis=1).reshape(-1, 2)
    arrays = [thr, tp, ov.n_pred - tp, ov.n_true - tp, pairs, iou50[order], ov.true_ids, ov.pred_ids]
    for arr in arrays:
        arr.setflags(write=False)
    return ImageMatch(
        thresholds=thr,
        strict=bool(strict),
        n_true=ov.n_true,
        n_pred=ov.n_pred,
        tp=arrays[1],
        fp=arrays[2],
        fn=arrays[3],
        tp50=int(ti.size),
        fp50=int(ov.n_pred - ti.size),
        fn50=int(ov.n_true - ti.size),
        matched_pairs=arrays[4],
        matched_iou=arrays[5],
        true_ids=arrays[6],
        pred_ids=arrays[7],
    )


def competition_score(true: np.ndarray, pred: np.ndarray, strict: bool = True) -> float:
    """DSB 2018 score of one image: mean over IoU 0.50..0.95 of ``TP / (TP + FP + FN)``."""
    return match_labels(true, pred, DEFAULT_THRESHOLDS, strict=strict).competition_score
