"""Segment multi-channel images and time/z stacks plane by plane, and write their outputs.

Every plane goes through :meth:`nucleiseg.inference.segmenter.Segmenter.segment` (normalise,
size estimate, probabilities, post-processing: the stages are not repeated here); the labels of
the planes are stacked into an array of the input's stack shape. Labels are numbered 1..n in each
plane on its own (a nucleus is identified by its plane and label).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import roifile
import tifffile
from tqdm import tqdm

from nucleiseg.config import InferConfig, PostprocessConfig
from nucleiseg.inference.segmenter import Result, Segmenter
from nucleiseg.io.atomic import atomic_path
from nucleiseg.io.geojson import write_geojson
from nucleiseg.io.images import to_uint8_rgb
from nucleiseg.io.layout import OutputLayout, OutputOptions
from nucleiseg.io.measure import measure
from nucleiseg.io.outputs import label_rois, overlay_outlines, write_measurements
from nucleiseg.io.stacks import Planes, resolve_planes, write_label_stack

__all__ = [
    "StackResult", "plane_positions", "segment_array", "segment_planes", "stack_measurements", "stack_record",
    "write_stack_outputs",
]


@dataclass
class StackResult:
    """The segmentation of a stack: one :class:`Result` per plane and the stacked labels.

    Attributes
    ----------
    labels : ndarray
        ``stack_shape + (H, W)`` labels, numbered 1..n within each plane.
    planes : list of Result
        Per-plane results in C order of the stack axes.
    axes : str
        Axes of ``labels`` (``"ZYX"``, ``"TYX"``, ``"TZYX"``, or ``"YX"`` for one plane).
    """

    labels: np.ndarray
    planes: list[Result] = field(default_factory=list)
    axes: str = "YX"

    @property
    def count(self) -> int:
        """Nuclei over all planes."""
        return sum(r.count for r in self.planes)


def segment_planes(
    segmenter: Segmenter,
    planes: Planes,
    infer: InferConfig | None = None,
    post: PostprocessConfig | None = None,
    progress: bool = False,
    name: str = "",
) -> StackResult:
    """Segment every plane with ``segmenter.segment`` and stack the labels.

    Parameters
    ----------
    segmenter : Segmenter
        The model.
    planes : Planes
        From :func:`nucleiseg.io.stacks.read_planes` or :func:`~nucleiseg.io.stacks.resolve_planes`.
    infer, post : optional
        Settings for every plane (default: the model's).
    progress : bool
        A progress bar over the planes (stderr, removed when done; only for two planes or more).
    name : str
        The bar's label (the image id).
    """
    bar = tqdm(planes.planes, desc=f"{name} planes".strip(), unit="plane", leave=False,
               disable=not progress or len(planes.planes) < 2)
    results = [segmenter.segment(plane, infer, post, keep_probabilities=False) for plane in bar]
    height, width = planes.planes.shape[1:3]
    dtype = np.uint32 if any(int(r.labels.max(initial=0)) > np.iinfo(np.int32).max for r in results) else np.int32
    labels = np.stack([r.labels.astype(dtype, copy=False) for r in results]).reshape((*planes.stack_shape, height, width))
    return StackResult(labels, results, planes.label_axes)


def segment_array(
    segmenter: Segmenter,
    array: np.ndarray,
    axes: str | None = None,
    channel: int | str | None = None,
    channel_names: list[str] | None = None,
    infer: InferConfig | None = None,
    post: PostprocessConfig | None = None,
) -> StackResult:
    """Segment an array of any layout: pick ``channel``, split the T/Z ``axes`` into planes.

    Examples
    --------
    >>> seg = Segmenter.from_pretrained("classical")  # doctest: +SKIP
    >>> segment_array(seg, stack, axes="ZCYX", channel=2).labels.shape  # doctest: +SKIP
    (10, 256, 256)
    """
    planes = resolve_planes(array, axes, channel, channel_names)
    return segment_planes(segmenter, planes, infer, post)


def plane_positions(stack_axes: str, stack_shape: tuple[int, ...]) -> list[dict[str, int]]:
    """QuPath plane ``{"c": -1, "z": z, "t": t}`` of each flat plane index (C order)."""
    out = []
    for index in np.ndindex(*stack_shape):
        where = dict(zip(stack_axes, index, strict=True))
        out.append({"c": -1, "z": int(where.get("Z", 0)), "t": int(where.get("T", 0))})
    return out


def stack_measurements(result: StackResult, planes: Planes) -> pd.DataFrame:
    """:func:`nucleiseg.io.measure.measure` of every plane (µm columns with a pixel size), with a leading ``plane`` column."""
    tables = []
    for p, (res, image) in enumerate(zip(result.planes, planes.planes, strict=True)):
        table = measure(res.labels, image, planes.pixel_size.um)
        table.insert(0, "plane", np.full(len(table), p, np.int64))
        tables.append(table)
    return pd.concat(tables, ignore_index=True)


def _write_overlay_stack(path: Path, planes: Planes, result: StackResult) -> None:
    rgb = np.stack([overlay_outlines(to_uint8_rgb(img), r.labels) for img, r in zip(planes.planes, result.planes, strict=True)])
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, rgb, imagej=True, photometric="rgb", metadata={"axes": "ZYXS"}, compression="zlib")


def _write_stack_rois(path: Path, result: StackResult) -> None:
    """ImageJ ROIs of every plane, each with its stack position (1-based) so Fiji puts it on its slice."""
    rois = [roi for p, res in enumerate(result.planes) for roi in label_rois(res.labels, p + 1, f"p{p:04d}-")]
    with atomic_path(path) as tmp:
        roifile.roiwrite(tmp, rois, mode="w")


def write_stack_outputs(
    item_id: str, planes: Planes, result: StackResult, out_dir: Path, options: OutputOptions
) -> list[str]:
    """Write the outputs of a stack that ``options`` asks for; return the file names.

    ``<id>_masks.tif`` is the label stack (ImageJ hyperstack); ``--overlay`` gives an RGB stack
    ``<id>_overlay.tif``; ``--measure`` one CSV with a ``plane`` column; ``--rois`` one zip
    whose ROIs carry their stack position; ``--geojson`` detections with their QuPath plane.
    ``--png`` is refused (a PNG holds one plane).
    """
    if options.png:
        raise ValueError(f"a {planes.stack_axes} stack of {len(planes.planes)} planes cannot be written as PNG; drop --png (the stack is in {item_id}_masks.tif)")
    layout = OutputLayout(Path(out_dir), options)
    written: list[str] = []

    def put(kind: str) -> Path:
        written.append(layout.name(item_id, kind))
        return layout.path(item_id, kind)

    write_label_stack(put("masks"), result.labels, result.axes, planes.pixel_size.um)
    if options.overlay:
        _write_overlay_stack(put("overlay_stack"), planes, result)
    table = stack_measurements(result, planes) if (options.measure or options.geojson) else None
    if options.measure and table is not None:
        write_measurements(put("measurements"), table)
    if options.geojson:
        flat = result.labels.reshape((-1, *result.labels.shape[-2:]))
        write_geojson(put("geojson"), flat, table, plane_positions(planes.stack_axes, planes.stack_shape))
    if options.rois:
        _write_stack_rois(put("rois"), result)
    return written


def stack_record(planes: Planes, result: StackResult) -> dict[str, Any]:
    """Record fields of a stack for ``run.json``: planes, axes, channel, per-plane counts and pixel size."""
    diameters = [r.diameter for r in result.planes if r.diameter is not None]
    sources = [r.diameter_source for r in result.planes if r.diameter_source]
    return {
        "count": result.count,
        "diameter": round(float(np.median(diameters)), 2) if diameters else None,
        "diameter_source": sources[0] if sources else None,
        "scale": round(float(np.median([r.scale for r in result.planes])), 4),
        "estimate_seconds": round(sum(float(r.timings.get("estimate", 0.0)) for r in result.planes), 4),
        "planes": len(result.planes),
        "axes": result.axes,
        "plane_counts": [r.count for r in result.planes],
        **planes.pixel_size.record(),
    }
