"""Segment many files into an output folder: per-image outputs, a summary and ``run.json``.

One bad file never stops the batch: its error is recorded as one line naming the file, the rest
continue, and the summary counts the failures. Every output is written atomically.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from nucleiseg import __version__
from nucleiseg.config import InferConfig, PostprocessConfig
from nucleiseg.inference.segmenter import Result, Segmenter
from nucleiseg.inference.stack import segment_planes, stack_record, write_stack_outputs
from nucleiseg.io.atomic import atomic_write_text
from nucleiseg.io.labels import InputItem, load_item_gt
from nucleiseg.io.geojson import write_geojson
from nucleiseg.io.images import to_uint8_rgb, write_image, write_labels
from nucleiseg.io.stacks import read_planes
from nucleiseg.io.outputs import difference_overlay, measure, overlay_outlines, write_measurements, write_rois
from nucleiseg.io.rle import write_rle_csv


@dataclass
class OutputOptions:
    """Which files to write for each image (``<id>_masks.tif`` is always written).

    ``geojson`` writes ``<id>.geojson`` (QuPath detections with measurements). ``channel`` and
    ``axes`` say how to read multi-channel images and stacks (:func:`nucleiseg.io.stacks.read_planes`):
    the nuclear channel (index or metadata name) and the axis letters of files without metadata.
    """

    png: bool = False
    overlay: bool = False
    measure: bool = False
    rois: bool = False
    rle: str | None = None
    geojson: bool = False
    channel: int | str | None = None
    axes: str | None = None


@dataclass
class BatchSummary:
    """What a batch did: per-image records, failures and the wall time."""

    images: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def nuclei(self) -> int:
        """Total nuclei over the successful images."""
        return sum(int(r["count"]) for r in self.images)

    def line(self) -> str:
        """The one-line summary printed at the end of a command."""
        return (
            f"{len(self.images)} images segmented, {self.nuclei} nuclei, "
            f"{len(self.failures)} failed, {self.seconds:.1f} s"
        )


def versions() -> dict[str, str]:
    """Versions of Python, nucleiseg and the main libraries (for sidecars)."""
    import skimage
    import torch

    return {
        "nucleiseg": __version__,
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "torch": torch.__version__,
        "scikit-image": skimage.__version__,
        "platform": platform.platform(),
    }


def write_outputs(item: InputItem, image: np.ndarray, result: Result, out_dir: Path, options: OutputOptions) -> list[str]:
    """Write the requested outputs of one image; returns the file names written."""
    written = []
    write_labels(out_dir / f"{item.id}_masks.tif", result.labels)
    written.append(f"{item.id}_masks.tif")
    if options.png:
        write_labels(out_dir / f"{item.id}_masks.png", result.labels)
        written.append(f"{item.id}_masks.png")
    if options.overlay:
        rgb = to_uint8_rgb(image)
        truth = load_item_gt(item) if item.gt_path is not None else None
        write_image(out_dir / f"{item.id}_overlay.png", overlay_outlines(rgb, result.labels))
        written.append(f"{item.id}_overlay.png")
        if truth is not None and truth.shape == result.labels.shape:
            write_image(out_dir / f"{item.id}_diff.png", difference_overlay(rgb, truth, result.labels))
            written.append(f"{item.id}_diff.png")
    table = measure(result.labels, image) if (options.measure or options.geojson) else None
    if options.measure:
        write_measurements(out_dir / f"{item.id}_measurements.csv", table)
        written.append(f"{item.id}_measurements.csv")
    if options.geojson:
        write_geojson(out_dir / f"{item.id}.geojson", result.labels, table)
        written.append(f"{item.id}.geojson")
    if options.rois:
        write_rois(out_dir / f"{item.id}_rois.zip", result.labels)
        written.append(f"{item.id}_rois.zip")
    return written


def failure_record(item: InputItem, exc: BaseException) -> dict[str, str]:
    """The one-line failure record of an image: id, file and a message naming the file."""
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if str(item.image_path) not in message:
        message = f"{item.image_path}: {message}"
    return {"id": item.id, "file": str(item.image_path), "error": message}


def segment_one(
    item: InputItem,
    segmenter: Segmenter,
    out_dir: Path,
    options: OutputOptions,
    infer: InferConfig,
    post: PostprocessConfig,
    want_labels: bool = False,
) -> dict[str, Any]:
    """Segment one image and write its outputs; a bad file gives ``{"failure": ...}``, never raises.

    Returns ``{"record": ..., "labels": ...}`` on success (``labels`` only with ``want_labels``).
    The serial batch and the Dask workers both call this, so their records are identical.
    """
    t = time.perf_counter()
    try:
        planes = read_planes(item.image_path, options.channel, options.axes)
        if planes.is_stack:
            if options.rle or options.png:  # refused before the planes are segmented
                flag = "--rle" if options.rle else "--png"
                raise ValueError(f"a {planes.stack_axes} stack of {len(planes.planes)} planes cannot be written by {flag} (2-D only); drop {flag}")
            stacked = segment_planes(segmenter, planes, infer, post)
            files = write_stack_outputs(item.id, planes, stacked, out_dir, options)
        else:
            image = planes.image
            result = segmenter.segment(image, infer, post, keep_probabilities=False)
            files = write_outputs(item, image, result, out_dir, options)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:  # one bad image never stops the batch
        return {"failure": failure_record(item, exc)}
    if planes.is_stack:
        record = {"id": item.id, "file": str(item.image_path), **stack_record(planes, stacked)}
        record.update(channel=planes.channel, seconds=round(time.perf_counter() - t, 4), outputs=files)
        return {"record": record, "labels": None}
    record = {
        "id": item.id,
        "file": str(item.image_path),
        "count": result.count,
        "diameter": None if result.diameter is None else round(float(result.diameter), 2),
        "diameter_source": result.diameter_source,
        "scale": round(float(result.scale), 4),
        "seconds": round(time.perf_counter() - t, 4),
        "outputs": files,
    }
    if planes.channel is not None:
        record["channel"] = planes.channel
    return {"record": record, "labels": result.labels if want_labels else None}


def segment_items(
    items: list[InputItem],
    out_dir: str | Path,
    segmenter: Segmenter,
    options: OutputOptions | None = None,
    infer: InferConfig | None = None,
    post: PostprocessConfig | None = None,
    progress: bool = True,
    workers: int = 1,
    worker_threads: int | None = None,
) -> BatchSummary:
    """Segment every input item into ``out_dir`` and write ``run.json``.

    Parameters
    ----------
    items : list of InputItem
        From :func:`nucleiseg.io.labels.discover_inputs`.
    out_dir : path
        Output folder (created).
    segmenter : Segmenter
        The model.
    options : OutputOptions
        Extra outputs.
    infer, post : optional
        Override the model's inference and post-processing settings.
    progress : bool
        Show a progress bar.
    workers : int
        Worker processes; above 1, images are segmented in parallel by
        :func:`nucleiseg.inference.pool.iter_outcomes` (one model copy per worker, the cores
        shared out between them). Records keep the input order either way.
    worker_threads : int, optional
        Threads per worker process (default: the cores divided by ``workers``).
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    options = options or OutputOptions()
    infer = infer or segmenter.config.infer
    post = post or segmenter.config.postprocess
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = BatchSummary()
    rle_labels: dict[str, np.ndarray] = {}
    start = time.perf_counter()
    want = bool(options.rle)
    if workers > 1 and len(items) > 1:
        from nucleiseg.inference.pool import iter_outcomes

        outcomes = iter_outcomes(items, segmenter, out, options, infer, post, min(workers, len(items)), want, worker_threads)
    else:
        outcomes = ((i, segment_one(item, segmenter, out, options, infer, post, want_labels=want)) for i, item in enumerate(items))
    done: dict[int, dict[str, Any]] = {}
    with tqdm(total=len(items), desc="segment", unit="img", disable=not progress) as bar:
        for index, outcome in outcomes:
            done[index] = outcome
            if "failure" in outcome:
                tqdm.write(f"error: {outcome['failure']['error']}", file=sys.stderr)
            bar.update()
    for index, item in enumerate(items):
        outcome = done[index]
        if "failure" in outcome:
            summary.failures.append(outcome["failure"])
            continue
        if options.rle:
            rle_labels[item.id] = outcome["labels"]
        summary.images.append(outcome["record"])
    summary.seconds = time.perf_counter() - start
    if options.rle:
        write_rle_csv(options.rle, rle_labels)
    sidecar = {
        **segmenter.describe(infer, post),
        "versions": versions(),
        "workers": workers,
        "images": summary.images,
        "failures": summary.failures,
        "summary": {"images": len(summary.images), "nuclei": summary.nuclei, "failed": len(summary.failures), "seconds": round(summary.seconds, 3)},
    }
    atomic_write_text(out / "run.json", json.dumps(sidecar, indent=2))
    return summary
