"""The per-image step of every batch: read one file, segment it, write its outputs, return its record.

:class:`ItemStep` is what an executor maps over the items (in this process, in worker processes
or on Dask workers): it is small and picklable, and it never raises for a bad file (its outcome
is ``{"failure": ...}`` instead). :func:`load_segmenter` loads the model of a
:class:`~nucleiseg.bundle.ModelSpec`, the same way in every process.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nucleiseg.bundle import ModelSpec
from nucleiseg.config import InferConfig, PostprocessConfig
from nucleiseg.inference.record import failure_record
from nucleiseg.inference.segmenter import Result, Segmenter
from nucleiseg.io.images import write_labels
from nucleiseg.io.labels import InputItem, load_item_gt
from nucleiseg.io.layout import OutputLayout, OutputOptions
from nucleiseg.io.stacks import read_planes

__all__ = ["ItemStep", "load_segmenter", "segment_one", "spec_of", "streams_masks", "write_outputs"]

Outcome = dict[str, Any]


def load_segmenter(spec: ModelSpec) -> Segmenter:
    """Load the model of ``spec`` (backend, device and threads included): :meth:`Segmenter.from_spec`.

    ``spec.threads`` reaches ONNX Runtime's intra-op threads and, for the PyTorch backend,
    PyTorch's (process-wide) thread count. Every executor loads its models through here.
    """
    return Segmenter.from_spec(spec)


def spec_of(segmenter: Segmenter) -> ModelSpec | None:
    """The :class:`ModelSpec` a segmenter was loaded from (None when it was built by hand)."""
    return getattr(segmenter, "source", None)


def write_outputs(item: InputItem, image: np.ndarray, result: Result, out_dir: Path, options: OutputOptions) -> list[str]:
    """Write the requested outputs of one 2-D image; returns the file names written."""
    layout = OutputLayout(Path(out_dir), options)
    written = []
    # Writers of optional outputs are imported when asked for (pandas, shapely, roifile cost start-up time).

    def put(kind: str) -> Path:
        written.append(layout.name(item.id, kind))
        return layout.path(item.id, kind)

    write_labels(put("masks"), result.labels)
    if options.png:
        write_labels(put("masks_png"), result.labels)
    if options.overlay:
        from nucleiseg.io.images import to_uint8_rgb, write_image
        from nucleiseg.io.outputs import difference_overlay, overlay_outlines

        rgb = to_uint8_rgb(image)
        truth = load_item_gt(item) if item.gt_path is not None else None
        write_image(put("overlay"), overlay_outlines(rgb, result.labels))
        if truth is not None and truth.shape == result.labels.shape:
            write_image(put("diff"), difference_overlay(rgb, truth, result.labels))
    if options.measure or options.geojson:
        from nucleiseg.io.outputs import measure, write_measurements

        table = measure(result.labels, image)
        if options.measure:
            write_measurements(put("measurements"), table)
        if options.geojson:
            from nucleiseg.io.geojson import write_geojson

            write_geojson(put("geojson"), result.labels, table)
    if options.rois:
        from nucleiseg.io.outputs import write_rois

        write_rois(put("rois"), result.labels)
    return written


def streams_masks(segmenter: Segmenter, shape: tuple[int, ...], options: OutputOptions, infer: InferConfig, want_labels: bool = False) -> bool:
    """True when an image of ``shape`` is segmented block-wise straight into its ``_masks.tif``.

    That is when :meth:`Segmenter.goes_blockwise` and the masks are the only output asked for
    (every other output needs the whole label image in memory).
    """
    extras = options.png or options.overlay or options.measure or options.rois or options.geojson or options.rle
    return not extras and not want_labels and segmenter.goes_blockwise(shape, infer)


def _stream_masks(
    item: InputItem, image: np.ndarray, segmenter: Segmenter, out_dir: Path, options: OutputOptions,
    infer: InferConfig, post: PostprocessConfig,
) -> tuple[Result, int, list[str]]:
    """Segment a large image block-wise, writing its labels tile by tile; ``(result, count, files)``.

    The result holds no labels (an empty array): they went to the file as they were made.
    """
    from nucleiseg.distributed.stream import block_plan, write_block_labels

    layout = OutputLayout(Path(out_dir), options)
    t0 = time.perf_counter()
    plan = block_plan(segmenter, image, infer, post)
    count = write_block_labels(layout.path(item.id, "masks"), image, plan)
    result = segmenter.blockwise_result(np.zeros((0, 0), np.int32), plan, infer, time.perf_counter() - t0)
    return result, count, [layout.name(item.id, "masks")]


def _image_record(item: InputItem, result: Result, seconds: float, files: list[str], count: int | None = None) -> dict[str, Any]:
    record = {
        "id": item.id,
        "file": str(item.image_path),
        "count": result.count if count is None else count,
        "diameter": None if result.diameter is None else round(float(result.diameter), 2),
        "diameter_source": result.diameter_source,
        "scale": round(float(result.scale), 4),
        "seconds": round(seconds, 4),
        "outputs": files,
    }
    if result.probe_centre is not None:  # the size estimate looked off-centre (an empty middle)
        record["probe_centre"] = [int(v) for v in result.probe_centre]
    return record


def segment_one(
    item: InputItem,
    segmenter: Segmenter,
    out_dir: Path,
    options: OutputOptions,
    infer: InferConfig,
    post: PostprocessConfig,
    want_labels: bool = False,
) -> Outcome:
    """Segment one image and write its outputs; a bad file gives ``{"failure": ...}``, never raises.

    Returns ``{"record": ..., "labels": ...}`` on success (``labels`` only with ``want_labels``;
    always None for a stack, which the run-length CSV refuses).
    """
    t = time.perf_counter()
    try:
        planes = read_planes(item.image_path, options.channel, options.axes)
        read_seconds = time.perf_counter() - t
        if planes.is_stack:
            from nucleiseg.inference.stack import segment_planes, write_stack_outputs

            if options.rle or options.png:  # refused before the planes are segmented
                flag = "--rle" if options.rle else "--png"
                raise ValueError(f"a {planes.stack_axes} stack of {len(planes.planes)} planes cannot be written by {flag} (2-D only); drop {flag}")
            stacked = segment_planes(segmenter, planes, infer, post)
            files = write_stack_outputs(item.id, planes, stacked, Path(out_dir), options)
        else:
            image = planes.image
            count, w = None, time.perf_counter()
            if streams_masks(segmenter, image.shape, options, infer, want_labels):  # labels never held whole
                result, count, files = _stream_masks(item, image, segmenter, Path(out_dir), options, infer, post)
            else:
                result = segmenter.segment(image, infer, post, keep_probabilities=False)
                w = time.perf_counter()
                files = write_outputs(item, image, result, Path(out_dir), options)
            write_seconds = time.perf_counter() - w if count is None else 0.0
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:  # one bad image never stops the batch
        return {"failure": failure_record(item, exc)}
    if planes.is_stack:
        from nucleiseg.inference.stack import stack_record

        record = {"id": item.id, "file": str(item.image_path), **stack_record(planes, stacked)}
        record.update(channel=planes.channel, seconds=round(time.perf_counter() - t, 4), outputs=files)
        return {"record": record, "labels": None}
    record = _image_record(item, result, time.perf_counter() - t, files, count)
    stages = {"read": read_seconds, **{k: v for k, v in result.timings.items() if k != "total"}, "write": write_seconds}
    record["timings"] = {k: round(v, 4) for k, v in stages.items()}
    if planes.channel is not None:
        record["channel"] = planes.channel
    return {"record": record, "labels": result.labels if want_labels else None}


@dataclass(frozen=True)
class ItemStep:
    """The per-image step with its settings bound: ``step(item, segmenter) -> outcome``.

    Picklable, so worker processes and Dask workers receive it as it is and run exactly what
    the serial batch runs.
    """

    out_dir: Path
    options: OutputOptions
    infer: InferConfig
    post: PostprocessConfig
    want_labels: bool = False

    def __call__(self, item: InputItem, segmenter: Segmenter) -> Outcome:
        """Run :func:`segment_one` on ``item``."""
        return segment_one(item, segmenter, self.out_dir, self.options, self.infer, self.post, self.want_labels)
