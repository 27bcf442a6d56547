"""High-level functions: segment one array, evaluate folders (``nucleiseg evaluate`` calls this)."""

from __future__ import annotations

import functools
from dataclasses import replace
from pathlib import Path

import numpy as np


def segment(
    image: np.ndarray,
    model: str | Path = "default",
    *,
    channel: int | str | None = None,
    axes: str | None = None,
    channel_names: list[str] | None = None,
    pixel_size: float | None = None,
    **infer_options: object,
) -> np.ndarray:
    """Segment one image array (or a multi-channel image, or a time/z stack) into instance labels.

    Parameters
    ----------
    image : ndarray
        ``(H, W)`` gray or ``(H, W, 3|4)`` colour image of any dtype; with ``axes``, any layout
        such as ``(Z, Y, X)``, ``(C, Y, X)`` or ``(T, C, Y, X)``.
    model : str or Path
        Bundled model name, run folder, or ``"classical"``.
    channel : int or str, optional
        The nuclear channel of a multi-channel image (index, or a name from ``channel_names``).
    axes : str, optional
        One letter per dimension of ``image`` (T, Z, C, S, Y, X); needed when the layout is not
        plain gray or RGB. T and Z planes are segmented one by one.
    channel_names : list of str, optional
        Names of the channels, for ``channel="dapi"``.
    pixel_size : float, optional
        µm per pixel, for a ``diameter`` in micrometres (``diameter="8um"``).
    **infer_options
        Fields of :class:`~nucleiseg.config.InferConfig` to override (``tta=True``, ...).
        ``diameter`` is a number of pixels or a string such as ``"30px"`` or ``"8um"``
        (:func:`nucleiseg.io.units.parse_diameter`); 0 or ``"auto"`` estimates it, as by default.
        Native scale without an estimate is ``rescale=False``.

    Returns
    -------
    ndarray
        ``(H, W)`` labels, or ``stack_shape + (H, W)`` for a stack (labels 1..n per plane).

    Examples
    --------
    >>> import nucleiseg, imageio.v3 as iio  # doctest: +SKIP
    >>> labels = nucleiseg.segment(iio.imread("examples/fluo_small.png"), model="classical")  # doctest: +SKIP
    >>> nucleiseg.segment(zstack, axes="ZYX").shape  # (10, H, W)  # doctest: +SKIP
    >>> nucleiseg.segment(image, diameter="8um", pixel_size=0.325)  # 24.6 px  # doctest: +SKIP
    """
    infer_options = _diameter_in_pixels(infer_options, pixel_size)
    segmenter = _cached_segmenter(str(model))
    infer = replace(segmenter.config.infer, **infer_options)  # type: ignore[arg-type]
    image = np.asarray(image)
    plain = image.ndim == 2 or (image.ndim == 3 and image.shape[-1] in (3, 4))
    if channel is None and axes is None and plain:
        return segmenter.segment(image, infer, keep_probabilities=False).labels
    from nucleiseg.inference.stack import segment_array

    return segment_array(segmenter, image, axes, channel, channel_names, infer).labels


def _diameter_in_pixels(infer_options: dict[str, object], pixel_size: float | None) -> dict[str, object]:
    """``infer_options`` with a ``diameter`` (``"30px"``, ``"8um"``, ...) as pixels."""
    from nucleiseg.io.units import parse_diameter

    if "diameter" in infer_options:
        infer_options["diameter"] = parse_diameter(infer_options["diameter"], pixel_size)
    return infer_options


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
        Folder of ``<id>_masks.tif`` (``nucleiseg segment`` output), label images, or a
        run-length CSV (image shapes from the ground truth; Height/Width columns not needed).

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
    if not truth:
        raise FileNotFoundError(f"{gt}: no ground truth found")
    unscored: set[str] = set()
    if Path(pred).is_file() and Path(pred).suffix.lower() == ".csv":  # a run-length CSV: shapes from the ground truth
        from nucleiseg.io.rle import read_rle_csv, rle_image_ids

        preds = read_rle_csv(pred, shapes={k: v.shape for k, v in truth.items()}, unknown="skip")
        unscored = set(rle_image_ids(pred))
    else:
        preds = load_ground_truth(pred)

    def pairs():
        for key in sorted(truth):
            true = truth[key]
            yield key, true, preds.get(key, np.zeros_like(true))

    report = evaluate_pairs(pairs(), progress=progress)
    report.summary["missing_predictions"] = sorted(set(truth) - set(preds))
    report.summary["unmatched_predictions"] = sorted((set(preds) | unscored) - set(truth))
    return report
