"""High-level functions over files and folders; the CLI and the web app call these."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from nucleiseg.config import InferConfig, PostprocessConfig


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

    from nucleiseg.inference.segmenter import Segmenter

    segmenter = Segmenter.from_pretrained(model)
    infer = replace(segmenter.config.infer, **infer_options)  # type: ignore[arg-type]
    return segmenter.segment(image, infer).labels


def segment_paths(
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    model: str | Path = "default",
    infer: InferConfig | None = None,
    post: PostprocessConfig | None = None,
    options: object | None = None,
    progress: bool = True,
    device: str = "cpu",
):
    """Discover images under ``inputs`` and segment them all into ``out_dir``.

    Returns the :class:`~nucleiseg.inference.batch.BatchSummary`; ``summary.failures`` lists
    the files that could not be processed.
    """
    from nucleiseg.inference.batch import segment_items
    from nucleiseg.inference.segmenter import Segmenter
    from nucleiseg.io.labels import discover_inputs

    items = discover_inputs([Path(p) for p in inputs])
    if not items:
        raise FileNotFoundError(f"no images found in: {', '.join(map(str, inputs))}")
    segmenter = Segmenter.from_pretrained(model, device=device)
    return segment_items(items, out_dir, segmenter, options, infer, post, progress)  # type: ignore[arg-type]


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
