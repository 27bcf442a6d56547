"""Evaluation: the DSB 2018 object-matching score, pixel metrics and dataset reports."""

from nucleiseg.metrics.matching import (
    DEFAULT_THRESHOLDS,
    Overlaps,
    competition_score,
    iou_matrix,
    match_labels,
    overlaps,
)
from nucleiseg.metrics.pixel import pixel_metrics
from nucleiseg.metrics.report import EvaluationReport, evaluate_pairs
from nucleiseg.metrics.scores import ImageMatch, aggregate, aggregate_per_threshold

__all__ = [
    "DEFAULT_THRESHOLDS",
    "EvaluationReport",
    "ImageMatch",
    "Overlaps",
    "aggregate",
    "aggregate_per_threshold",
    "competition_score",
    "evaluate_pairs",
    "iou_matrix",
    "match_labels",
    "overlaps",
    "pixel_metrics",
]
