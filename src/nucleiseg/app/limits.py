"""Safety limits of the web app: settings, upload caps, content sniffing and the request queue.

Every limit answers with a JSON body ``{"error": "<one line>"}`` and a 4xx/5xx status:

* request bodies larger than the upload cap: 413, checked on ``Content-Length`` before anything
  is read *and* by counting the bytes as they arrive (chunked uploads carry no length);
* each uploaded file larger than ``max_upload_bytes``: 413 (counted while it is read);
* files that are not PNG, TIFF, JPEG or BMP by their first bytes: 415 (the name is ignored);
* more than ``max_concurrency`` running plus ``max_queue`` waiting requests: 503.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import anyio
from fastapi import HTTPException, UploadFile
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "AppSettings",
    "BodySizeLimit",
    "MULTIPART_SLACK",
    "RequestGate",
    "UPLOAD_KINDS",
    "api_error",
    "read_upload",
    "safe_name",
    "scrub",
    "sniff_kind",
]

#: Bytes allowed on top of the file sizes for multipart headers and the form's option fields.
MULTIPART_SLACK = 64 * 1024

#: Magic bytes of the image formats the app accepts, mapped to a format name.
UPLOAD_KINDS: dict[bytes, str] = {
    b"\x89PNG\r\n\x1a\n": "png",
    b"\xff\xd8\xff": "jpeg",
    b"BM": "bmp",
    b"II*\x00": "tiff",
    b"MM\x00*": "tiff",
    b"II+\x00": "tiff",
    b"MM\x00+": "tiff",
}
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_CHUNK = 1 << 20


@dataclass
class AppSettings:
    """Limits and model of one app instance.

    Parameters
    ----------
    model : str
        Bundled model name, run folder or ``"classical"``; ``"default"`` falls back to
        ``"classical"`` (with a log line) while no default model is bundled.
    max_upload_bytes : int
        Largest accepted file per form field (the request body may hold two files for
        ``/api/evaluate``).
    max_pixels : int
        Largest accepted image, in pixels (height x width), checked on the file header.
    max_concurrency : int
        Images processed at the same time (each in a worker thread).
    max_queue : int
        Requests allowed to wait for a worker; one more is refused with 503.
    device : str
        Torch device of network models.
    data : tuple of str
        Dataset folders offered on the Train and Performance screens (``--data``).
    runs : str, optional
        Folder of training runs (``--runs``), kept across restarts; None uses a temporary
        folder removed when the server stops.
    max_dataset_bytes : int
        Largest dataset ZIP accepted by ``POST /api/datasets``.
    max_dataset_files : int
        Most files in a dataset ZIP.
    max_dataset_unpacked_bytes : int
        Most bytes a dataset ZIP may unpack to.
    """

    model: str = "default"
    max_upload_bytes: int = 32 * 1024 * 1024
    max_pixels: int = 64_000_000
    max_concurrency: int = 2
    max_queue: int = 8
    device: str = "cpu"
    data: tuple[str, ...] = ()
    runs: str | None = None
    max_dataset_bytes: int = 256 * 1024 * 1024
    max_dataset_files: int = 5000
    max_dataset_unpacked_bytes: int = 1024 * 1024 * 1024

    def __post_init__(self) -> None:
        """Reject nonsensical limits with one clear line."""
        for name in ("max_upload_bytes", "max_pixels", "max_concurrency", "max_dataset_bytes", "max_dataset_files",
                     "max_dataset_unpacked_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"AppSettings.{name} must be a positive integer, got {value!r}")
        if not isinstance(self.max_queue, int) or self.max_queue < 0:
            raise ValueError(f"AppSettings.max_queue must be a non-negative integer, got {self.max_queue!r}")


def api_error(status: int, message: str) -> HTTPException:
    """An :class:`HTTPException` whose detail becomes the ``{"error": ...}`` body."""
    return HTTPException(status_code=status, detail=" ".join(str(message).split()))


def safe_name(filename: str | None, default: str = "image") -> str:
    """The stem of an uploaded file's name, reduced to ``[A-Za-z0-9._-]`` (no folders, 80 chars)."""
    stem = Path((filename or "").replace("\\", "/")).name
    stem = stem.rsplit(".", 1)[0] if "." in stem[1:] else stem
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._")[:80]
    return stem or default


def scrub(message: str, folder: str | Path, replacement: str = "") -> str:
    """Remove a temporary folder's path (and any trailing separator) from an error message."""
    text = str(message)
    for variant in {str(folder), str(Path(folder).resolve())}:
        text = text.replace(variant + "/", replacement).replace(variant, replacement)
    return " ".join(text.split())


def sniff_kind(head: bytes) -> str | None:
    """``"png"``, ``"tiff"``, ``"jpeg"``, ``"bmp"`` or ``"zip"`` from a file's first bytes, else None."""
    for magic, kind in UPLOAD_KINDS.items():
        if head.startswith(magic):
            return kind
    if head.startswith(_ZIP_MAGIC):
        return "zip"
    return None


async def read_upload(upload: UploadFile, max_bytes: int, field: str, allowed: tuple[str, ...]) -> tuple[bytes, str]:
    """Read one uploaded file, counting bytes, and check its type by content.

    Parameters
    ----------
    upload : UploadFile
        The form field's file.
    max_bytes : int
        Cap on the file size; reading stops as soon as it is passed.
    field : str
        Form field name, used in messages.
    allowed : tuple of str
        Kinds accepted (see :func:`sniff_kind`).

    Returns
    -------
    (bytes, str)
        The content and its kind.

    Raises
    ------
    HTTPException
        413 over the cap, 422 for an empty file, 415 for a type not in ``allowed``.
    """
    name = safe_name(upload.filename, field)
    chunks: list[bytes] = []
    size = 0
    while chunk := await upload.read(_CHUNK):
        size += len(chunk)
        if size > max_bytes:
            raise api_error(413, f"{field} '{name}' is larger than the upload limit of {_mb(max_bytes)}")
        chunks.append(chunk)
    data = b"".join(chunks)
    if not data:
        raise api_error(422, f"{field} '{name}' is empty")
    kind = sniff_kind(data[:16])
    if kind not in allowed:
        wanted = "a ZIP of mask images" if allowed == ("zip",) else "a PNG, TIFF, JPEG or BMP image"
        raise api_error(415, f"{field} '{name}' is not {wanted} (judged by its content, not its name)")
    return data, kind


def _mb(n: int) -> str:
    return f"{n / 1024 / 1024:.3g} MB" if n >= 1024 * 1024 else f"{n} bytes"


class RequestGate:
    """Bound the images processed at once and the requests waiting for a worker.

    The counter is only touched on the event loop, so it needs no lock; the worker threads are
    bounded by an :class:`anyio.CapacityLimiter` created on first use inside the loop.
    """

    def __init__(self, max_concurrency: int, max_queue: int) -> None:
        self.max_concurrency = max_concurrency
        self.max_queue = max_queue
        self.in_flight = 0
        self._limiter: anyio.CapacityLimiter | None = None

    @property
    def waiting(self) -> int:
        """Requests admitted but not yet running."""
        return max(0, self.in_flight - self.max_concurrency)

    def admit(self) -> None:
        """Count one request in, or raise 503 when the queue is full."""
        if self.in_flight >= self.max_concurrency + self.max_queue:
            raise api_error(
                503, f"server busy: {self.max_concurrency} images in progress and {self.max_queue} waiting; retry shortly"
            )
        self.in_flight += 1

    def release(self) -> None:
        """Count one request out."""
        self.in_flight -= 1

    async def run(self, func, *args):  # noqa: ANN001, ANN202 - generic pass-through
        """Run ``func(*args)`` in a worker thread once one of ``max_concurrency`` slots is free."""
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self.max_concurrency)
        return await anyio.to_thread.run_sync(func, *args, limiter=self._limiter)


class BodySizeLimit:
    """ASGI middleware refusing request bodies over a per-path byte limit with 413.

    ``Content-Length`` is checked before the application runs; the bytes actually received are
    counted too, so a chunked upload without a length is cut off as soon as it passes the limit.

    Parameters
    ----------
    app : ASGI app
    limits : dict of str to int
        Path -> largest body in bytes; paths not listed use ``default``.
    default : int
    per_file : int
        The per-file upload cap, quoted in the error message.
    """

    def __init__(self, app: ASGIApp, limits: dict[str, int], default: int, per_file: int) -> None:
        self.app = app
        self.limits = limits
        self.default = default
        self.per_file = per_file

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on with a counting ``receive``, or answer 413."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limits.get(scope.get("path", ""), self.default)
        message = f"request body is larger than allowed (the upload limit is {_mb(self.per_file)} per file)"
        for key, value in scope.get("headers", []):
            if key == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await _send_json(send, 400, "invalid Content-Length header")
                    return
                if declared > limit:
                    await _send_json(send, 413, message)
                    return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            msg = await receive()
            if msg["type"] == "http.request":
                received += len(msg.get("body", b""))
                if received > limit:
                    raise api_error(413, message)
            return msg

        async def tracking_send(msg: Message) -> None:
            nonlocal started
            if msg["type"] == "http.response.start":
                started = True
            await send(msg)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except HTTPException as exc:  # raised by counting_receive outside a route's handlers
            if started or exc.status_code != 413:
                raise
            await _send_json(send, 413, str(exc.detail))


async def _send_json(send: Send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), (b"connection", b"close")],
    })
    await send({"type": "http.response.body", "body": body})
