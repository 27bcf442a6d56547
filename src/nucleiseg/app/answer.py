"""The ``/api/segment`` JSON answer, built in bounded memory.

:func:`render_answer` turns an image and its labels into the answer's parts (measurements, the image
PNG, the outline overlay PNG, the 16-bit labels PNG) band by band: a gray ``uint8`` image is
encoded from the image itself (a gray PNG), the overlay's RGB rows exist one band at a time,
and the measurements are computed on row bands. :class:`JsonAnswer` then sends the JSON text in
pieces, base64-encoding each PNG as it goes, so no copy of the whole text (as ``str``, then
``bytes``) is ever held. Beyond the image and its ``int32`` labels (5 bytes per pixel for a gray
image) the answer holds its PNGs and a few bands' temporaries (``tests/test_app_memory.py``).
"""

from __future__ import annotations

import binascii
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from fastapi.responses import StreamingResponse

from nucleiseg.app.png_stream import (
    band_rows,
    png_from_array,
    png_from_bands,
    png_from_labels,
)
from nucleiseg.io.images import to_uint8_rgb
from nucleiseg.io.measure import measure_in_bands
from nucleiseg.io.outputs import difference_rows, draw_outlines, outline_palette, outline_rows

__all__ = [
    "JsonAnswer", "Rendered", "answer", "clean_number", "difference_png", "display_image", "overlay_png", "render_answer",
    "table_json",
]

#: Bytes of PNG data base64-encoded per piece of the answer (a multiple of 3).
_B64_PIECE = 3 << 16
#: Measurement rows converted to JSON at a time.
_RECORD_ROWS = 1024


def clean_number(value: Any) -> Any:
    """JSON-safe number: numpy scalars to Python, NaN/inf to None, floats rounded to 4 places."""
    if isinstance(value, (np.integer, int)) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return round(value, 4) if math.isfinite(value) else None
    return value


def _dumps(value: Any) -> bytes:
    """JSON text as FastAPI's ``JSONResponse`` writes it (compact, UTF-8, no NaN)."""
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")


def table_json(table: pd.DataFrame) -> tuple[list[bytes], list[bytes]]:
    """The measurements as JSON text: a list of row objects and the CSV as a JSON string.

    Converted :data:`_RECORD_ROWS` rows at a time and returned as pieces (never joined): the
    rows' values pass through :func:`clean_number`; the CSV is ``table.to_csv(index=False)``.
    """
    rows: list[bytes] = []
    csv: list[bytes] = [b'"']
    for start in range(0, max(len(table), 1), _RECORD_ROWS):
        part = table.iloc[start : start + _RECORD_ROWS]
        records = [{k: clean_number(v) for k, v in row.items()} for row in part.to_dict(orient="records")]
        if records:
            rows += [b"," if rows else b"[", _dumps(records)[1:-1]]
        csv.append(_dumps(part.to_csv(index=False, header=start == 0))[1:-1])  # escaping is per character
    return (rows or [b"["]) + [b"]"], [*csv, b'"']


def display_image(image: np.ndarray) -> np.ndarray:
    """The 8-bit image the page shows: ``(H, W)`` for a gray image, ``(H, W, 3)`` otherwise.

    A ``uint8`` gray image is returned as it is (no copy); other images are scaled by
    :func:`~nucleiseg.io.images.to_uint8_rgb` (gray keeps one of its equal channels).
    """
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim == 2 and image.dtype == np.uint8:
        return image
    rgb = to_uint8_rgb(image)
    return np.ascontiguousarray(rgb[..., 0]) if image.ndim == 2 else rgb


def _rgb_png(labels: np.ndarray, row_bytes: int, rows_of: Callable[[int, int], np.ndarray]) -> bytes:
    """An RGB PNG of ``labels``' shape whose rows ``top:stop`` are ``rows_of(top, stop)``, made band by band."""
    height, width = labels.shape
    step = min(outline_rows(labels), band_rows(row_bytes))
    bands = (rows_of(top, min(top + step, height)).reshape(-1, 3 * width) for top in range(0, height, step))
    return png_from_bands(width, height, 3, 8, bands)


def overlay_png(display: np.ndarray, labels: np.ndarray) -> bytes:
    """PNG of :func:`~nucleiseg.io.outputs.overlay_outlines` of ``display``, made one band of rows at a time."""
    palette = outline_palette(labels)

    def rows_of(top: int, stop: int) -> np.ndarray:
        rows = display[top:stop]
        out = np.repeat(rows[..., None], 3, axis=2) if rows.ndim == 2 else rows.copy()
        draw_outlines(out, labels, top, palette)
        return out

    return _rgb_png(labels, 3 * labels.shape[1], rows_of)


def difference_png(display: np.ndarray, true: np.ndarray, pred: np.ndarray) -> bytes:
    """PNG of :func:`~nucleiseg.io.outputs.difference_overlay` (no legend) of ``display``, one band of rows at a time.

    ``display`` is :func:`display_image` of the image; ``true`` and ``pred`` its label images.
    """

    def rows_of(top: int, stop: int) -> np.ndarray:
        rows = display[top:stop].astype(np.float32)
        return difference_rows(rows if rows.ndim == 2 else rows.mean(axis=2), true, pred, top)

    return _rgb_png(pred, 12 * pred.shape[1], rows_of)  # the band's float32 RGB rows


@dataclass(frozen=True)
class Rendered:
    """The large parts of a segmentation answer, as :func:`render_answer` makes them."""

    measurements: list[bytes]  #: JSON text of the rows, in pieces (:func:`table_json`)
    measurements_csv: list[bytes]  #: JSON string of the CSV, in pieces
    image_png: bytes
    overlay_png: bytes
    labels_png: bytes | None  #: None beyond 65,535 nuclei (no 16-bit PNG)


def render_answer(image: np.ndarray, labels: np.ndarray, pixel_size: float | None = None) -> Rendered:
    """Measurements and the three PNGs of an image and its labels, in bounded memory.

    Parameters
    ----------
    image : numpy.ndarray
        The segmented image (gray or RGB, any dtype).
    labels : numpy.ndarray
        Its ``(H, W)`` labels.
    pixel_size : float, optional
        µm per pixel, for the measurements' physical columns.
    """
    measurements, csv = table_json(measure_in_bands(labels, image, pixel_size))
    display = display_image(image)
    image_png = png_from_array(display)
    overlay = overlay_png(display, labels)
    del display
    top = int(labels.max()) if labels.size else 0
    return Rendered(measurements, csv, image_png, overlay, png_from_labels(labels) if top <= 65535 else None)


class _Base64:
    """Bytes sent as base64 text (a JSON string's content), a piece at a time."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __len__(self) -> int:
        return 4 * math.ceil(len(self.data) / 3)

    def pieces(self) -> Iterator[bytes]:
        view = memoryview(self.data)
        for start in range(0, len(view), _B64_PIECE):
            yield binascii.b2a_base64(view[start : start + _B64_PIECE], newline=False)


class JsonAnswer:
    """A JSON object sent in pieces, with PNG values base64-encoded while it is sent.

    Parameters
    ----------
    fields : dict
        Small members, serialised with :func:`json.dumps` at once.
    encoded : dict of str to list of bytes
        Members whose JSON text is ready, in pieces (e.g. :func:`table_json`).
    pngs : dict of str to bytes or None
        Members sent as base64 strings of these bytes (``null`` for None).
    """

    def __init__(self, fields: dict[str, Any], encoded: dict[str, list[bytes]], pngs: dict[str, bytes | None]) -> None:
        self._pieces: list[bytes | _Base64] = [b"{" + _dumps(fields)[1:-1]] if fields else [b"{"]
        comma = b"," if fields else b""
        for key, text in encoded.items():
            self._pieces += [comma + _dumps(key) + b":", *text]
            comma = b","
        for key, data in pngs.items():
            if data is None:
                self._pieces.append(comma + _dumps(key) + b":null")
            else:
                self._pieces += [comma + _dumps(key) + b':"', _Base64(data), b'"']
            comma = b","
        self._pieces.append(b"}")
        self.length = sum(len(piece) for piece in self._pieces)

    def chunks(self) -> Iterator[bytes]:
        """The JSON text, piece by piece (``length`` bytes in all)."""
        for piece in self._pieces:
            if isinstance(piece, _Base64):
                yield from piece.pieces()
            else:
                yield piece

    def response(self) -> StreamingResponse:
        """The answer as an ``application/json`` response with its ``Content-Length``."""
        return StreamingResponse(self.chunks(), media_type="application/json", headers={"Content-Length": str(self.length)})


def answer(fields: dict[str, Any], rendered: Rendered) -> JsonAnswer:
    """The ``/api/segment`` answer: ``fields``, the measurements (JSON and CSV) and the PNGs."""
    encoded = {"measurements": rendered.measurements, "measurements_csv": rendered.measurements_csv}
    pngs = {"image_png": rendered.image_png, "overlay_png": rendered.overlay_png, "labels_png": rendered.labels_png}
    return JsonAnswer(fields, encoded, pngs)
