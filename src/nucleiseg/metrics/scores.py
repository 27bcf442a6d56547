"""Per-image scores from matched object counts, and their aggregation over a dataset.

:func:`nucleiseg.metrics.matching.match_labels` counts, at each IoU threshold, the true
positives, false positives and false negatives of one image; :class:`ImageMatch` holds those
counts and derives the DSB score, precision, recall, F1, panoptic quality and mean matched IoU
from them (with the empty-image conventions described in :mod:`nucleiseg.metrics.matching`).
:func:`aggregate_per_threshold` and :func:`aggregate` combine the images of a dataset
("macro" as the Kaggle leaderboard, or "micro").
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

__all__ = ["ImageMatch", "aggregate", "aggregate_per_threshold"]


def _ratio(num: np.ndarray | float, den: np.ndarray | float, both_empty: bool) -> np.ndarray:
    """``num / den`` with the empty-image convention where ``den == 0``."""
    num = np.asarray(num, float)
    den = np.asarray(den, float)
    fill = 1.0 if both_empty else 0.0
    return np.divide(num, den, out=np.full(np.broadcast(num, den).shape, fill), where=den > 0)


@dataclass(frozen=True, eq=False)
class ImageMatch:
    """Matching result of one image: counts per threshold and the derived scores.

    Attributes
    ----------
    thresholds : np.ndarray
        IoU thresholds, shape ``(T,)``.
    strict : bool
        ``True``: match when ``iou > t`` (Kaggle); ``False``: ``iou >= t`` (StarDist/Cellpose).
    n_true, n_pred : int
        Number of true and predicted objects.
    tp, fp, fn : np.ndarray
        Integer counts per threshold, shape ``(T,)``.
    tp50, fp50, fn50 : int
        Counts at IoU 0.5 (computed even when 0.5 is not in ``thresholds``).
    matched_pairs : np.ndarray
        ``(TP50, 2)`` original ``(true_id, pred_id)`` pairs matched at 0.5.
    matched_iou : np.ndarray
        IoU of each pair in ``matched_pairs``.
    true_ids, pred_ids : np.ndarray
        Original ids, sorted; internal object ``i`` is ``true_ids[i]``.
    """

    thresholds: np.ndarray
    strict: bool
    n_true: int
    n_pred: int
    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    tp50: int
    fp50: int
    fn50: int
    matched_pairs: np.ndarray
    matched_iou: np.ndarray
    true_ids: np.ndarray
    pred_ids: np.ndarray

    @property
    def both_empty(self) -> bool:
        """True when the image has neither true nor predicted objects."""
        return self.n_true == 0 and self.n_pred == 0

    @property
    def score(self) -> np.ndarray:
        """``TP / (TP + FP + FN)`` per threshold (the DSB per-threshold score)."""
        return _ratio(self.tp, self.tp + self.fp + self.fn, self.both_empty)

    @property
    def precision(self) -> np.ndarray:
        """``TP / (TP + FP)`` per threshold."""
        return _ratio(self.tp, self.tp + self.fp, self.both_empty)

    @property
    def recall(self) -> np.ndarray:
        """``TP / (TP + FN)`` per threshold."""
        return _ratio(self.tp, self.tp + self.fn, self.both_empty)

    @property
    def f1(self) -> np.ndarray:
        """``2 TP / (2 TP + FP + FN)`` per threshold."""
        return _ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn, self.both_empty)

    @property
    def competition_score(self) -> float:
        """Mean of :attr:`score` over the thresholds (the Kaggle per-image score)."""
        return float(self.score.mean())

    @property
    def ap50(self) -> float:
        """``TP / (TP + FP + FN)`` at IoU 0.5, what Kaggle and Cellpose call "AP"."""
        return float(_ratio(self.tp50, self.tp50 + self.fp50 + self.fn50, self.both_empty))

    @property
    def f1_50(self) -> float:
        """F1 at IoU 0.5."""
        return float(_ratio(2 * self.tp50, 2 * self.tp50 + self.fp50 + self.fn50, self.both_empty))

    @property
    def precision50(self) -> float:
        """Precision at IoU 0.5."""
        return float(_ratio(self.tp50, self.tp50 + self.fp50, self.both_empty))

    @property
    def recall50(self) -> float:
        """Recall at IoU 0.5."""
        return float(_ratio(self.tp50, self.tp50 + self.fn50, self.both_empty))

    @property
    def panoptic_quality(self) -> float:
        """Panoptic quality at 0.5: ``sum(matched IoU) / (TP + FP/2 + FN/2)``."""
        den = self.tp50 + 0.5 * self.fp50 + 0.5 * self.fn50
        return float(_ratio(self.matched_iou.sum(), den, self.both_empty))

    @property
    def mean_matched_iou(self) -> float:
        """Mean IoU of the pairs matched at 0.5 (0.0 without matches, 1.0 if both empty)."""
        return float(_ratio(self.matched_iou.sum(), self.tp50, self.both_empty))


def aggregate_per_threshold(matches: Iterable[ImageMatch], mode: str = "macro") -> np.ndarray:
    """Dataset score per threshold from per-image matches.

    Parameters
    ----------
    matches : iterable of ImageMatch
        Results computed with the same thresholds.
    mode : {"macro", "micro"}
        ``macro``: mean over images of each image's score (the Kaggle leaderboard; every image
        counts equally). ``micro``: sum TP, FP and FN over all images first, then
        ``TP / (TP + FP + FN)`` (StarDist's dataset-level style; crowded images weigh more).
        If every image is empty, the micro score is 1.0 (the empty-image convention).

    Returns
    -------
    np.ndarray
        One score per threshold.
    """
    if mode not in ("macro", "micro"):
        raise ValueError(f"mode must be 'macro' or 'micro', got {mode!r}")
    items = list(matches)
    if not items:
        raise ValueError("no matches to aggregate")
    thr = items[0].thresholds
    if any(m.thresholds.shape != thr.shape or not np.array_equal(m.thresholds, thr) for m in items):
        raise ValueError("all matches must use the same thresholds")
    if mode == "macro":
        return np.mean([m.score for m in items], axis=0)
    tp = np.sum([m.tp for m in items], axis=0)
    fp = np.sum([m.fp for m in items], axis=0)
    fn = np.sum([m.fn for m in items], axis=0)
    return _ratio(tp, tp + fp + fn, bool(np.all(tp + fp + fn == 0)))


def aggregate(matches: Iterable[ImageMatch], mode: str = "macro") -> float:
    """Dataset competition score: :func:`aggregate_per_threshold` averaged over thresholds."""
    return float(aggregate_per_threshold(matches, mode).mean())
