"""The per-image step of every batch: read one file, segment it, write its outputs, return its record.

:class:`ItemStep` is what an executor maps over the items (in this process, in worker processes
or on Dask workers): it is small and picklable, and it never raises for a bad file (its outcome
is ``{"failure": ...}`` instead). :func:`load_segmenter` loads the model of a
:class:`~nucleiseg.bundle.ModelSpec`, the same way in every process.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nucleiseg.bundle import ModelSpec
from nucleiseg.config import InferConfig, PostprocessConfig
from nucleiseg.inference.record import failure_record
from nucleiseg.inference.segmenter import Result, Segmenter
from nucleiseg.io.atomic import OutputError, output_fault
from nucleiseg.io.captured import captured, fold
from nucleiseg.io.images import write_labels
from nucleiseg.io.labels import InputItem, load_item_gt
from nucleiseg.io.layout import OutputLayout, OutputOptions
from nucleiseg.io.stacks import Planes, read_planes
from nucleiseg.io.units import Diameter

if TYPE_CHECKING:
    from nucleiseg.inference.stack import StackResult

__all__ = ["ItemStep", "discard_outputs", "load_segmenter", "segment_one", "spec_of", "streams_masks", "write_outputs"]

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


def write_outputs(
    item: InputItem, image: np.ndarray, result: Result, out_dir: Path, options: OutputOptions, pixel_size: float | None = None
) -> list[str]:
    """Write the requested outputs of one 2-D image; returns the file names written.

    ``pixel_size`` (µm per pixel) adds the µm columns to the measurements and QuPath's µm
    measurements to the GeoJSON.
    """
    layout = OutputLayout(Path(out_dir), options)
    written = []
    # Writers of optional outputs are imported when asked for (pandas, shapely, roifile cost start-up time).

    def put(kind: str) -> Path:
        written.append(layout.name(item.id, kind))
        return layout.path(item.id, kind)

    write_labels(put("masks"), result.labels, pixel_size)
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

        table = measure(result.labels, image, pixel_size)
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
    infer: InferConfig, post: PostprocessConfig, pixel_size: float | None = None,
) -> tuple[Result, int, list[str]]:
    """Segment a large image block-wise, writing its labels tile by tile; ``(result, count, files)``.

    The result holds no labels (an empty array): they went to the file as they were made.
    """
    from nucleiseg.distributed.stream import block_plan, write_block_labels

    layout = OutputLayout(Path(out_dir), options)
    t0 = time.perf_counter()
    plan = block_plan(segmenter, image, infer, post)
    count = write_block_labels(layout.path(item.id, "masks"), image, plan, pixel_size)
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


def discard_outputs(item_id: str, out_dir: Path, options: OutputOptions) -> None:
    """Remove every output of ``item_id`` (2-D and stack forms, the difference overlay) that exists.

    A failed image keeps no outputs, so ``--resume`` does it again and nothing looks finished
    that is not.
    """
    layout = OutputLayout(Path(out_dir), options)
    names = {*layout.expected(item_id), *layout.expected(item_id, stack=True), layout.name(item_id, "diff")}
    for name in names:
        with contextlib.suppress(OSError):
            (Path(out_dir) / name).unlink()


@contextlib.contextmanager
def _writing(item_id: str, out_dir: Path, options: OutputOptions) -> Iterator[None]:
    """Write an image's outputs: on any error none are left; an output-folder error becomes :class:`OutputError`."""
    try:
        yield
    except BaseException as exc:
        discard_outputs(item_id, out_dir, options)
        fault = output_fault(exc, out_dir)
        if fault is not None:
            raise fault from exc
        raise


def _read(item: InputItem, options: OutputOptions, notes: list[str]):  # noqa: ANN202 - Planes
    """Read the image's planes; the readers' warnings go to ``notes`` instead of stderr."""
    with captured() as caught:
        try:
            return read_planes(item.image_path, options.channel, options.axes, pixel_size=options.pixel_size)
        finally:
            notes.extend(caught)


def segment_one(
    item: InputItem,
    segmenter: Segmenter,
    out_dir: Path,
    options: OutputOptions,
    infer: InferConfig,
    post: PostprocessConfig,
    want_labels: bool = False,
    plane_progress: bool = False,
) -> Outcome:
    """Segment one image and write its outputs; a bad file gives ``{"failure": ...}``, never raises.

    Returns ``{"record": ..., "labels": ...}`` on success (``labels`` only with ``want_labels``;
    always None for a stack, which the run-length CSV refuses). An error of the output folder
    itself (full, read-only, no permission: :class:`~nucleiseg.io.atomic.OutputError`) gives
    ``{"fatal": ...}``: the batch stops. A failed image leaves no outputs. Warnings of the
    readers are folded into the file's one-line error (or its record's ``warnings``).
    ``plane_progress`` shows a bar over the planes of a stack (the serial batch only).
    """
    t = time.perf_counter()
    notes: list[str] = []
    try:
        planes = _read(item, options, notes)
        read_seconds = time.perf_counter() - t
        infer = _infer_for(planes, options, infer)
        if planes.is_stack:
            stacked, files = _segment_stack(item, planes, segmenter, out_dir, options, infer, post, plane_progress)
        else:
            result, count, files, write_seconds = _segment_image(item, planes, segmenter, out_dir, options, infer, post, want_labels)
    except (KeyboardInterrupt, SystemExit):
        raise
    except OutputError as exc:  # the folder cannot take more files: the batch stops
        return {"fatal": {"id": item.id, "file": str(item.image_path), "error": str(exc)}}
    except Exception as exc:  # one bad image never stops the batch
        failure = failure_record(item, exc)
        failure["error"] = fold(failure["error"], notes)
        return {"failure": failure}
    if planes.is_stack:
        return {"record": _noted(_stack_record(item, planes, stacked, t, files), notes), "labels": None}
    record = _plane_record(item, planes, result, time.perf_counter() - t, files, count, (read_seconds, write_seconds))
    return {"record": _noted(record, notes), "labels": result.labels if want_labels else None}


def _infer_for(planes: Planes, options: OutputOptions, infer: InferConfig) -> InferConfig:
    """``infer`` with a diameter given in µm (``options.diameter_um``) as pixels of this image."""
    if options.diameter_um is not None:
        return replace(infer, diameter=Diameter(options.diameter_um, "um").pixels(planes.pixel_size.um))
    return infer


def _segment_stack(
    item: InputItem, planes: Planes, segmenter: Segmenter, out_dir: Path, options: OutputOptions, infer: InferConfig,
    post: PostprocessConfig, plane_progress: bool,
) -> tuple[StackResult, list[str]]:
    """Segment the planes of a stack and write its outputs: ``(stacked, files)``."""
    from nucleiseg.inference.stack import segment_planes, write_stack_outputs

    if options.rle or options.png:  # refused before the planes are segmented
        flag = "--rle" if options.rle else "--png"
        raise ValueError(f"a {planes.stack_axes} stack of {len(planes.planes)} planes cannot be written by {flag} (2-D only); drop {flag}")
    stacked = segment_planes(segmenter, planes, infer, post, progress=plane_progress, name=item.id)
    with _writing(item.id, out_dir, options):
        files = write_stack_outputs(item.id, planes, stacked, Path(out_dir), options)
    return stacked, files


def _segment_image(
    item: InputItem, planes: Planes, segmenter: Segmenter, out_dir: Path, options: OutputOptions, infer: InferConfig,
    post: PostprocessConfig, want_labels: bool,
) -> tuple[Result, int | None, list[str], float]:
    """Segment a 2-D image and write its outputs: ``(result, count, files, write seconds)``.

    ``count`` is None unless the labels went straight to the file (then ``result`` holds none).
    """
    image = planes.image
    count, w = None, time.perf_counter()
    if streams_masks(segmenter, image.shape, options, infer, want_labels):  # labels never held whole
        with _writing(item.id, out_dir, options):
            result, count, files = _stream_masks(item, image, segmenter, Path(out_dir), options, infer, post,
                                                 planes.pixel_size.um)
    else:
        result = segmenter.segment(image, infer, post, keep_probabilities=False)
        w = time.perf_counter()
        with _writing(item.id, out_dir, options):
            files = write_outputs(item, image, result, Path(out_dir), options, planes.pixel_size.um)
    return result, count, files, time.perf_counter() - w if count is None else 0.0


def _stack_record(item: InputItem, planes: Planes, stacked: StackResult, started: float, files: list[str]) -> dict[str, Any]:
    """The ``run.json`` record of a segmented stack (``started``: when its step began)."""
    from nucleiseg.inference.stack import stack_record

    record = {"id": item.id, "file": str(item.image_path), **stack_record(planes, stacked)}
    record.update(channel=planes.channel, seconds=round(time.perf_counter() - started, 4), outputs=files)
    return record


def _plane_record(item: InputItem, planes: Planes, result: Result, seconds: float, files: list[str], count: int | None,
                  read_write: tuple[float, float]) -> dict[str, Any]:
    """The ``run.json`` record of a segmented 2-D image, with its stage timings."""
    record = _image_record(item, result, seconds, files, count)
    record.update(planes.pixel_size.record())
    stages = {"read": read_write[0], **{k: v for k, v in result.timings.items() if k != "total"}, "write": read_write[1]}
    record["timings"] = {k: round(v, 4) for k, v in stages.items()}
    if planes.channel is not None:
        record["channel"] = planes.channel
    return record


def _noted(record: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    if notes:
        record["warnings"] = notes
    return record


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
    #: A progress bar per stack over its planes (set for the serial batch with progress on).
    plane_progress: bool = False

    def __call__(self, item: InputItem, segmenter: Segmenter) -> Outcome:
        """Run :func:`segment_one` on ``item``."""
        return segment_one(item, segmenter, self.out_dir, self.options, self.infer, self.post, self.want_labels,
                           self.plane_progress)
