"""High-level functions: segment one array, evaluate folders (``nucleiseg evaluate`` calls this)."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np


def segment(image: np.ndarray, model: str | Path = "default", **infer_options: object) -> np.ndarray:
    """Segment one image array and return its instance labels.

    Parameters
    ----------
    image : ndarray
        ``(H, W)`` gray or ``(H, W, 3|4)`` colour image of any dtype.
    model : str or Path
        Bundled model name, run folder, or ``"classical"``.
    **infer_options
        Fields of :class:`~nucleiseg.config.InferConfig` to override (``tta=True``, ...).

    Examples
    --------
    >>> import nucleiseg, imageio.v3 as iio  # doctest: +SKIP
    >>> labels = nucleiseg.segment(iio.imread("examples/fluo_small.png"), model="classical")  # doctest: +SKIP
    """
    from dataclasses import replace

    segmenter = _cached_segmenter(str(model))
    infer = replace(segmenter.config.infer, **infer_options)  # type: ignore[arg-type]
    return segmenter.segment(image, infer, keep_probabilities=False).labels


@functools.lru_cache(maxsize=4)
def _cached_segmenter(model: str):
    """Load each model once per process, so calling :func:`segment` in a loop reads no weights again."""
    from nucleiseg.inference.segmenter import Segmenter

    return Segmenter.from_pretrained(model)


def evaluate_paths(gt: str | Path, pred: str | Path, progress: bool = False):
    """Score predicted label images against ground truth.

    Parameters
    ----------
    gt : path
        DSB folder, folder of label images, or run-length CSV with Height/Width columns.
    pred : path
        Folder of ``<id>_masks.tif`` (``nucleiseg segment`` output), label images, or a CSV.

    Returns
    -------
    EvaluationReport
        Per-image table and macro/micro summaries. Ground-truth images with no prediction are
        scored against an empty prediction; predictions with no ground truth are ignored and
        reported in ``report.summary["unmatched_predictions"]``.
    """
    from nucleiseg.io.labels import load_ground_truth
    from nucleiseg.metrics import evaluate_pairs

    truth = load_ground_truth(gt)
    preds = load_ground_truth(pred)
    if not truth:
        raise FileNotFoundError(f"{gt}: no ground truth found")

    def pairs():
        for key in sorted(truth):
            true = truth[key]
            yield key, true, preds.get(key, np.zeros_like(true))

    report = evaluate_pairs(pairs(), progress=progress)
    report.summary["missing_predictions"] = sorted(set(truth) - set(preds))
    report.summary["unmatched_predictions"] = sorted(set(preds) - set(truth))
    return report
