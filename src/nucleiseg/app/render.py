"""The web app's work off the event loop: decode uploads, segment, and build responses.

Uploaded bytes are decoded through :func:`nucleiseg.io.read_image` from a private temporary
folder that is removed before the function returns; error messages name the uploaded file, never
a path on the server. Images in JSON responses are base64-encoded PNGs (labels as 16-bit gray).
"""

from __future__ import annotations

import base64
import io
import json
import re
import tempfile
import time
import zipfile
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import HTTPException
from fastapi.responses import StreamingResponse
from PIL import Image
from skimage.measure import label as connected_components

from nucleiseg.config import InferConfig, PostprocessConfig
from nucleiseg.inference.item import write_outputs
from nucleiseg.inference.record import versions
from nucleiseg.inference.segmenter import Result, Segmenter
from nucleiseg.io.dsb import merge_masks
from nucleiseg.inference.stack import segment_planes, stack_record, write_stack_outputs
from nucleiseg.io.images import ImageReadError, read_labels
from nucleiseg.io.labels import InputItem
from nucleiseg.io.layout import RUN_RECORD, OutputOptions
from nucleiseg.io.stacks import Planes, read_planes
from nucleiseg.io.units import Diameter
from nucleiseg.metrics import match_labels, pixel_metrics
from nucleiseg.app.answer import answer, clean_number, difference_png, display_image, overlay_png, render_answer
from nucleiseg.app.limits import api_error, scrub
from nucleiseg.app.uploads import member_path

__all__ = [
    "Options",
    "Upload",
    "evaluate_job",
    "png_bytes",
    "segment_job",
    "zip_job",
]

#: Most mask files accepted in a ground-truth ZIP.
MAX_ZIP_MASKS = 10_000
_PIXEL_CAP_PHRASE = "more than the limit"


@dataclass(frozen=True)
class Upload:
    """One uploaded file: its (sanitised) name, content and sniffed kind."""

    name: str
    data: bytes
    kind: str


@dataclass(frozen=True)
class Options:
    """Per-request settings from the form (None keeps the model's own value).

    ``diameter`` is pixels or micrometres (``"8um"``, with the file's pixel size or
    ``pixel_size``); 0 or ``"auto"`` estimates it (:class:`nucleiseg.io.units.Diameter`).
    ``pixel_size`` (µm per pixel) overrides the file's metadata.
    """

    tta: bool = False
    threshold: float | None = None
    min_size: int | None = None
    diameter: Diameter | None = None
    channel: int | str | None = None
    axes: str | None = None
    min_confidence: float | None = None
    pixel_size: float | None = None

    def configs(self, segmenter: Segmenter, pixel_size: float | None = None) -> tuple[InferConfig, PostprocessConfig]:
        """The model's settings with these overrides; ``pixel_size`` (µm) converts a diameter in µm.

        Raises 422 for a diameter in µm without a pixel size.
        """
        infer = replace(segmenter.config.infer, tta=self.tta or segmenter.config.infer.tta)
        if self.diameter is not None:
            try:
                infer = replace(infer, diameter=self.diameter.pixels(pixel_size))
            except ValueError as exc:
                raise api_error(422, f"diameter: {exc}") from None
        return infer, segmenter.config.postprocess.overridden(self.threshold, self.min_size, self.min_confidence)


def png_bytes(array: np.ndarray) -> bytes:
    """Encode a ``uint8`` RGB/gray or ``uint16`` gray array as PNG."""
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=3)
    return buf.getvalue()


def _base64(data: bytes) -> str:
    """``data`` (a PNG) as a base64 ASCII string."""
    return base64.b64encode(data).decode("ascii")


def _read_error(exc: ImageReadError, name: str, field: str, folder: Path, entry: str | None = None) -> HTTPException:
    """413 for the pixel cap, 422 for everything else, naming the upload instead of the temp file."""
    status = 413 if _PIXEL_CAP_PHRASE in exc.problem else 422
    where = f"{field} '{name}'" + (f": {entry}" if entry else "")
    return api_error(status, f"{where}: {scrub(exc.problem, folder, '')}")


def decode_planes(upload: Upload, max_pixels: int, options: Options | None = None, field: str = "file") -> Planes:
    """Decode an upload into planes (nuclear channel picked, T/Z split) or raise 413/422."""
    options = options or Options()
    with tempfile.TemporaryDirectory(prefix="nucleiseg-app-") as tmp:
        path = Path(tmp) / f"upload.{upload.kind}"
        path.write_bytes(upload.data)
        try:
            return read_planes(path, options.channel, options.axes, max_pixels=max_pixels, pixel_size=options.pixel_size)
        except ImageReadError as exc:
            raise _read_error(exc, upload.name, field, Path(tmp)) from None


def decode_image(upload: Upload, max_pixels: int, field: str = "file", options: Options | None = None) -> Planes:
    """Decode an uploaded image (one gray or RGB plane, dtype kept, with its pixel size) or raise 413/422 (422 for stacks)."""
    planes = decode_planes(upload, max_pixels, options, field)
    if planes.is_stack:
        raise api_error(
            422, f"{field} '{upload.name}' is a {planes.stack_axes} stack of {len(planes.planes)} planes; "
            "ask for ?format=zip to segment every plane"
        )
    return planes


def _binary_to_instances(labels: np.ndarray) -> np.ndarray:
    """A binary (0/1) label image is split into connected components, as the CLI does."""
    if labels.size and labels.max() == 1:
        return connected_components(labels, connectivity=1).astype(np.int32)
    return labels


def decode_ground_truth(upload: Upload, shape: tuple[int, int], max_pixels: int) -> np.ndarray:
    """Ground-truth labels from a label image or a ZIP of binary per-nucleus mask images.

    Raises 422 when the file cannot be read, holds no masks, or its shape differs from ``shape``.
    """
    field = "gt_zip" if upload.kind == "zip" else "gt"
    with tempfile.TemporaryDirectory(prefix="nucleiseg-app-") as tmp:
        folder = Path(tmp)
        try:
            if upload.kind != "zip":
                path = folder / f"gt.{upload.kind}"
                path.write_bytes(upload.data)
                labels = _binary_to_instances(read_labels(path, max_pixels=max_pixels))
            else:
                labels = _merge_zip(upload, folder, shape)
        except ImageReadError as exc:
            entry = exc.path.name.split("_", 1)[-1] if upload.kind == "zip" else None
            raise _read_error(exc, upload.name, field, folder, entry) from None
    if labels.shape != tuple(shape):
        raise api_error(422, f"{field} '{upload.name}' has shape {labels.shape}, the image has shape {tuple(shape)}")
    return labels


def _merge_zip(upload: Upload, folder: Path, shape: tuple[int, int]) -> np.ndarray:
    """Extract the mask images of a ZIP (names only, no folders) and merge them into labels."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(upload.data))
    except zipfile.BadZipFile:
        raise api_error(422, f"gt_zip '{upload.name}' is not a readable ZIP file") from None
    with archive:
        # The names the dataset upload refuses (absolute, "..", backslashes) are refused here too.
        members = [
            info for info in archive.infolist()
            if member_path(info.filename, f"gt_zip {upload.name}") is not None and not info.is_dir()
            and Path(info.filename).suffix.lower() in (".png", ".tif", ".tiff", ".bmp")
        ]
        if not members:
            raise api_error(422, f"gt_zip '{upload.name}' holds no PNG, TIFF or BMP mask images")
        if len(members) > MAX_ZIP_MASKS:
            raise api_error(413, f"gt_zip '{upload.name}' holds {len(members)} masks, more than {MAX_ZIP_MASKS}")
        # A binary mask compresses extremely well; refuse members that expand past a generous bound.
        budget = 64 + 8 * shape[0] * shape[1]
        paths = []
        for k, info in enumerate(sorted(members, key=lambda i: i.filename)):
            entry = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(info.filename).name)[-100:]
            if info.file_size > budget:
                raise api_error(413, f"gt_zip '{upload.name}': {entry} expands to {info.file_size} bytes")
            path = folder / f"{k:06d}_{entry}"
            try:
                with archive.open(info) as src:
                    data = src.read(budget + 1)
            except (zipfile.BadZipFile, zlib.error, EOFError, OSError, RuntimeError, NotImplementedError) as exc:
                raise api_error(422, f"gt_zip '{upload.name}': cannot extract {entry} ({exc})") from None
            if len(data) > budget:
                raise api_error(413, f"gt_zip '{upload.name}': {entry} expands past {budget} bytes")
            path.write_bytes(data)
            paths.append(path)
    labels, _ = merge_masks(paths, shape)
    return labels


def _run(segmenter: Segmenter, planes: Planes, options: Options) -> tuple[Result, dict[str, Any]]:
    infer, post = options.configs(segmenter, planes.pixel_size.um)
    result = segmenter.segment(planes.image, infer, post, keep_probabilities=False)
    return result, segmenter.describe(infer, post)


def _segment_fields(name: str, planes: Planes, result: Result, described: dict[str, Any]) -> dict[str, Any]:
    """The small members of the ``/api/segment`` answer."""
    image = planes.image
    return {
        "name": name,
        "count": result.count,
        "width": int(image.shape[1]),
        "height": int(image.shape[0]),
        "channels": 1 if image.ndim == 2 else int(image.shape[2]),
        "dtype": str(image.dtype),
        "diameter": clean_number(result.diameter),
        "diameter_source": result.diameter_source,
        "scale": clean_number(result.scale),
        **planes.pixel_size.record(),
        "model": described["model"],
        "model_hash": described["model_hash"],
        "settings": {"infer": described["infer"], "postprocess": described["postprocess"]},
    }


def segment_job(segmenter: Segmenter, upload: Upload, options: Options, max_pixels: int) -> StreamingResponse:
    """Decode, segment and render one upload into the ``/api/segment`` JSON answer.

    The image and labels are dropped once the answer's PNGs exist; the answer is sent in
    pieces (:class:`nucleiseg.app.answer.JsonAnswer`).
    """
    t0 = time.perf_counter()
    planes = decode_image(upload, max_pixels, options=options)
    t_decode = time.perf_counter() - t0
    result, described = _run(segmenter, planes, options)
    t1 = time.perf_counter()
    fields = _segment_fields(upload.name, planes, result, described)
    rendered = render_answer(planes.image, result.labels, planes.pixel_size.um)
    timings = {k: round(float(v), 4) for k, v in result.timings.items()}
    del planes, result  # the image and its labels are not needed to send the answer
    t_end = time.perf_counter()
    fields["timings"] = timings | {"decode": round(t_decode, 4), "render": round(t_end - t1, 4), "total_server": round(t_end - t0, 4)}
    return answer(fields, rendered).response()


def zip_job(segmenter: Segmenter, upload: Upload, options: Options, max_pixels: int) -> bytes:
    """Decode and segment one upload; return a ZIP with labels TIFF, overlay, CSV, GeoJSON and run.json.

    A time/z stack gives the stack outputs of :func:`nucleiseg.inference.stack.write_stack_outputs`.
    """
    t0 = time.perf_counter()
    planes = decode_planes(upload, max_pixels, options)
    if planes.is_stack:
        return _stack_zip(segmenter, upload.name, planes, options, t0)
    image = planes.image
    result, described = _run(segmenter, planes, options)
    name = upload.name
    sidecar = {
        **described,
        "versions": versions(),
        "image": {"name": name, "width": int(image.shape[1]), "height": int(image.shape[0]), "dtype": str(image.dtype)},
        "count": result.count,
        "diameter": clean_number(result.diameter),
        "diameter_source": result.diameter_source,
        "scale": clean_number(result.scale),
        **planes.pixel_size.record(),
        "timings": {k: round(float(v), 4) for k, v in result.timings.items()} | {"total_server": round(time.perf_counter() - t0, 4)},
    }
    buf = io.BytesIO()
    with tempfile.TemporaryDirectory(prefix="nucleiseg-app-") as tmp:
        # the batch's writer: the same files, names and formats as `nucleiseg segment --overlay --measure --geojson`
        item = InputItem(id=name, image_path=Path(name), gt_path=None)
        files = write_outputs(item, image, result, Path(tmp), OutputOptions(overlay=True, measure=True, geojson=True), planes.pixel_size.um)
        with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for file in files:
                zf.write(Path(tmp) / file, file)
            zf.writestr(RUN_RECORD, json.dumps(sidecar, indent=2))
    return buf.getvalue()


def _stack_zip(segmenter: Segmenter, name: str, planes: Planes, options: Options, t0: float) -> bytes:
    """ZIP of a stack's label stack, overlay stack, measurements (``plane`` column), GeoJSON and run.json."""
    infer, post = options.configs(segmenter, planes.pixel_size.um)
    stacked = segment_planes(segmenter, planes, infer, post)
    sidecar = {
        **segmenter.describe(infer, post),
        "versions": versions(),
        "image": {"name": name, "width": int(planes.planes.shape[2]), "height": int(planes.planes.shape[1]),
                  "dtype": str(planes.planes.dtype), "axes": planes.label_axes, "shape": list(stacked.labels.shape),
                  "channel": planes.channel},
        **stack_record(planes, stacked),
        "timings": {"total_server": round(time.perf_counter() - t0, 4)},
    }
    outputs = OutputOptions(overlay=True, measure=True, rois=True, geojson=True)
    buf = io.BytesIO()
    with tempfile.TemporaryDirectory(prefix="nucleiseg-app-") as tmp:
        files = write_stack_outputs(name, planes, stacked, Path(tmp), outputs)
        with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for file in files:
                zf.write(Path(tmp) / file, file)
            zf.writestr(RUN_RECORD, json.dumps(sidecar, indent=2))
    return buf.getvalue()


def evaluate_job(
    segmenter: Segmenter, upload: Upload, truth: Upload, options: Options, max_pixels: int
) -> dict[str, Any]:
    """Segment an upload and score it against uploaded ground truth (``/api/evaluate`` payload)."""
    t0 = time.perf_counter()
    planes = decode_image(upload, max_pixels, options=options)
    image = planes.image
    decode_ground_truth(truth, image.shape[:2], max_pixels)  # a bad file is refused before the long part
    result, described = _run(segmenter, planes, options)
    # Decoded again rather than held through the segmentation, whose peak it would raise by its
    # size (4 bytes per pixel: 256 MB for a 64 Mpx image); decoding costs little beside segmenting.
    true = decode_ground_truth(truth, image.shape[:2], max_pixels)
    pred = result.labels
    match = match_labels(true, pred)
    pixels = pixel_metrics(true, pred)
    display = display_image(image)  # PNGs made band by band (bounded memory, as /api/segment)
    per_threshold = [
        {"threshold": clean_number(t), "tp": int(tp), "fp": int(fp), "fn": int(fn), "score": clean_number(s)}
        for t, tp, fp, fn, s in zip(match.thresholds, match.tp, match.fp, match.fn, match.score, strict=True)
    ]
    return {
        "name": upload.name,
        "gt_name": truth.name,
        "width": int(image.shape[1]),
        "height": int(image.shape[0]),
        "model": described["model"],
        "model_hash": described["model_hash"],
        "n_true": match.n_true,
        "n_pred": match.n_pred,
        "count": result.count,
        "competition_score": clean_number(match.competition_score),
        "ap50": clean_number(match.ap50),
        "f1": clean_number(match.f1_50),
        "precision": clean_number(match.precision50),
        "recall": clean_number(match.recall50),
        "pq": clean_number(match.panoptic_quality),
        "mean_matched_iou": clean_number(match.mean_matched_iou),
        "tp": match.tp50,
        "fp": match.fp50,
        "fn": match.fn50,
        "per_threshold": per_threshold,
        "pixel": {k: clean_number(v) for k, v in pixels.items()},
        "diff_png": _base64(difference_png(display, true, pred)),  # the page has a legend
        "overlay_png": _base64(overlay_png(display, pred)),
        "timings": {"total_server": round(time.perf_counter() - t0, 4)},
    }
