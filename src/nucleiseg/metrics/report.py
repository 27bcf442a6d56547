"""Evaluate many (id, true, pred) label pairs into a per-image table and a dataset summary."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nucleiseg.io.atomic import atomic_path, atomic_write_text
from nucleiseg.metrics.matching import DEFAULT_THRESHOLDS, match_labels
from nucleiseg.metrics.pixel import pixel_metrics
from nucleiseg.metrics.scores import ImageMatch, aggregate_per_threshold

__all__ = ["EvaluationReport", "evaluate_pairs"]


def _score_column(t: float) -> str:
    """Name of the per-threshold score column, e.g. ``score@0.50``."""
    return f"score@{t:.2f}"


@dataclass
class EvaluationReport:
    """Per-image metrics and a dataset summary.

    Attributes
    ----------
    per_image : pandas.DataFrame
        One row per image: ``id, n_true, n_pred, score, ap50, f1_50, pq, mean_matched_iou,
        tp50, fp50, fn50, foreground_iou, dice, mean_iou_seed, pixel_accuracy`` and one
        ``score@t`` column per threshold.
    summary : dict
        ``n_images``, ``thresholds``, ``strict``, ``score_macro`` (Kaggle leaderboard: mean of
        per-image scores), ``score_micro`` (TP/FP/FN summed over images first), image means of
        ``ap50, f1_50, pq, mean_matched_iou, foreground_iou, dice, mean_iou_seed``, summed
        ``tp50, fp50, fn50``, and ``score_macro_per_threshold`` / ``score_micro_per_threshold``.
    matches : list of ImageMatch
        The per-image matching results, in input order.
    """

    per_image: pd.DataFrame
    summary: dict[str, Any]
    matches: list[ImageMatch] = field(repr=False)

    def to_json(self, path: str | Path) -> None:
        """Write ``{"summary": ..., "per_image": [...]}`` as JSON, atomically."""
        records = json.loads(self.per_image.to_json(orient="records"))
        text = json.dumps({"summary": self.summary, "per_image": records}, indent=2, allow_nan=False)
        atomic_write_text(path, text + "\n")

    def to_csv(self, path: str | Path) -> None:
        """Write the per-image table as CSV, atomically."""
        with atomic_path(path) as tmp:
            self.per_image.to_csv(tmp, index=False, float_format="%.6g")

    def format_table(self, max_rows: int | None = 20, worst_first: bool = True) -> str:
        """Terminal-friendly text: the summary, then up to ``max_rows`` per-image rows.

        Parameters
        ----------
        max_rows : int or None
            Rows of the per-image table to show (``None``: all).
        worst_first : bool
            Sort images by ascending score so the failures come first.
        """
        if max_rows is not None and max_rows < 0:
            raise ValueError(f"max_rows must be >= 0 or None, got {max_rows}")
        s = self.summary
        lines = [
            f"images: {s['n_images']}   IoU match: {'>' if s['strict'] else '>='} t",
            f"DSB score (macro, Kaggle): {s['score_macro']:.4f}   (micro): {s['score_micro']:.4f}",
            f"AP@0.5: {s['ap50']:.4f}   F1@0.5: {s['f1_50']:.4f}   PQ: {s['pq']:.4f}   "
            f"mean IoU (seed): {s['mean_iou_seed']:.4f}   TP/FP/FN@0.5: {s['tp50']}/{s['fp50']}/{s['fn50']}",
            "per threshold (macro): "
            + "  ".join(f"{k}:{v:.3f}" for k, v in s["score_macro_per_threshold"].items()),
        ]
        cols = ["id", "n_true", "n_pred", "score", "ap50", "f1_50", "pq", "tp50", "fp50", "fn50", "mean_iou_seed"]
        table = self.per_image[cols]
        if worst_first:
            table = table.sort_values("score", kind="stable")
        shown = table if max_rows is None else table.head(max_rows)
        if len(shown):
            shown = shown.assign(id=shown["id"].map(lambda x: x if len(x) <= 24 else x[:21] + "..."))
            lines.append(shown.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        if len(shown) < len(table):
            lines.append(f"... {len(table) - len(shown)} more image(s)")
        return "\n".join(lines)


def _row(image_id: str, match: ImageMatch, pix: dict[str, float]) -> dict[str, Any]:
    """Per-image table row."""
    row: dict[str, Any] = {
        "id": image_id,
        "n_true": match.n_true,
        "n_pred": match.n_pred,
        "score": match.competition_score,
        "ap50": match.ap50,
        "f1_50": match.f1_50,
        "pq": match.panoptic_quality,
        "mean_matched_iou": match.mean_matched_iou,
        "tp50": match.tp50,
        "fp50": match.fp50,
        "fn50": match.fn50,
        **pix,
    }
    for t, v in zip(match.thresholds, match.score, strict=True):
        row[_score_column(float(t))] = float(v)
    return row


def _summary(df: pd.DataFrame, matches: list[ImageMatch], strict: bool) -> dict[str, Any]:
    """Dataset-level numbers (plain Python types, JSON-ready)."""
    thr = matches[0].thresholds
    macro = aggregate_per_threshold(matches, "macro")
    micro = aggregate_per_threshold(matches, "micro")
    out: dict[str, Any] = {
        "n_images": len(matches),
        "thresholds": [round(float(t), 6) for t in thr],
        "strict": bool(strict),
        "score_macro": float(macro.mean()),
        "score_micro": float(micro.mean()),
    }
    for key in ("ap50", "f1_50", "pq", "mean_matched_iou", "foreground_iou", "dice", "mean_iou_seed"):
        out[key] = float(df[key].mean())
    for key in ("tp50", "fp50", "fn50", "n_true", "n_pred"):
        out[key] = int(df[key].sum())
    out["score_macro_per_threshold"] = {f"{t:.2f}": float(v) for t, v in zip(thr, macro, strict=True)}
    out["score_micro_per_threshold"] = {f"{t:.2f}": float(v) for t, v in zip(thr, micro, strict=True)}
    return out


def evaluate_pairs(
    items: Iterable[tuple[str, np.ndarray, np.ndarray]],
    progress: bool = False,
    thresholds: Sequence[float] | np.ndarray = DEFAULT_THRESHOLDS,
    strict: bool = True,
) -> EvaluationReport:
    """Score every ``(id, true_labels, pred_labels)`` pair and summarise the dataset.

    Parameters
    ----------
    items : iterable of (str, np.ndarray, np.ndarray)
        Image id, ground-truth label image and predicted label image (same shape). May be a
        generator, so images can be loaded one at a time.
    progress : bool
        Show a tqdm progress bar on stderr.
    thresholds : sequence of float
        IoU thresholds (default: DSB 2018, 0.50..0.95).
    strict : bool
        ``iou > t`` (Kaggle, default) or ``iou >= t``; see :mod:`nucleiseg.metrics.matching`.

    Returns
    -------
    EvaluationReport

    Raises
    ------
    ValueError
        If there are no items, an id repeats, or a pair's shapes differ (the message names the id).
    """
    iterator: Iterable[tuple[str, np.ndarray, np.ndarray]] = items
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(items, desc="evaluate", unit="img")
    rows: list[dict[str, Any]] = []
    matches: list[ImageMatch] = []
    seen: set[str] = set()
    for image_id, true, pred in iterator:
        image_id = str(image_id)
        if image_id in seen:
            raise ValueError(f"{image_id}: duplicate image id")
        seen.add(image_id)
        if np.shape(true) != np.shape(pred):
            raise ValueError(f"{image_id}: shape mismatch, true {np.shape(true)} vs pred {np.shape(pred)}")
        try:
            match = match_labels(true, pred, thresholds, strict=strict)
            pix = pixel_metrics(true, pred)
        except ValueError as exc:
            raise ValueError(f"{image_id}: {exc}") from exc
        matches.append(match)
        rows.append(_row(image_id, match, pix))
    if not rows:
        raise ValueError("evaluate_pairs: no image pairs to evaluate")
    df = pd.DataFrame(rows)
    return EvaluationReport(per_image=df, summary=_summary(df, matches, strict), matches=matches)
