"""Decoding image files into arrays, with every size checked before any pixel is decoded.

The format is recognised from the file's magic bytes (:func:`_sniff`), not its name. The pixel
count in the header is compared with a cap (:func:`_check_pixels`) so that a small file claiming
a huge size (a decompression bomb) is refused without allocating memory. TIFF files are read
with ``tifffile`` (first series, singleton axes removed, channels last); PNG, JPEG and BMP with
Pillow's plugin classes, keeping their bit depth. Any unreadable file raises
:class:`ImageReadError`. The public readers are in :mod:`nucleiseg.io.images`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from PIL import BmpImagePlugin, Image, JpegImagePlugin, PngImagePlugin

__all__ = ["ImageReadError"]

_PIL_MAGIC = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG", b"BM": "BMP"}
# Plugin classes parse only the header on construction and, unlike ``Image.open``, run no
# decompression-bomb check of their own (which would warn at Pillow's fixed limit).
_PIL_PLUGINS: dict[str, Any] = {
    "PNG": PngImagePlugin.PngImageFile,
    "JPEG": JpegImagePlugin.JpegImageFile,
    "BMP": BmpImagePlugin.BmpImageFile,
}
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


class ImageReadError(ValueError):
    """A file could not be read as an image; the message is ``"<path>: <problem>"``."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = Path(path)
        self.problem = " ".join(str(problem).split())
        super().__init__(f"{path}: {self.problem}")

    def __reduce__(self) -> tuple[type[ImageReadError], tuple[Path, str]]:
        """Pickle with both arguments, so the error survives data-loader worker processes."""
        return type(self), (self.path, self.problem)


def _sniff(path: Path) -> str:
    """Return ``"tiff"`` or a Pillow format name from the file's magic bytes."""
    if not path.exists():
        raise ImageReadError(path, "no such file")
    if not path.is_file():
        raise ImageReadError(path, "not a file")
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
    except OSError as exc:
        raise ImageReadError(path, f"cannot open ({exc.strerror or exc})") from exc
    if not head:
        raise ImageReadError(path, "empty file")
    if head[:4] in _TIFF_MAGIC:
        return "tiff"
    for magic, name in _PIL_MAGIC.items():
        if head.startswith(magic):
            return name
    raise ImageReadError(path, "not a PNG, TIFF, JPEG or BMP image")


def _check_pixels(path: Path, shape: tuple[int, ...], max_pixels: int) -> None:
    """Refuse empty images and images whose header claims more than ``max_pixels`` pixels."""
    if any(int(s) == 0 for s in shape):
        raise ImageReadError(path, f"empty image (shape {tuple(shape)})")
    n = int(np.prod([int(s) for s in shape], dtype=np.float64))
    if n > max_pixels:
        raise ImageReadError(
            path, f"image claims {n} pixels, more than the limit of {max_pixels} (possible decompression bomb)"
        )


def _load_pil(path: Path, fmt: str, max_pixels: int, expect: tuple[int, int] | None = None) -> Image.Image:
    """Open and fully load a PNG/JPEG/BMP with Pillow after checking its header size.

    ``expect`` optionally gives the required ``(H, W)``; a different header size is refused.
    """
    try:
        with open(path, "rb") as fh:
            # The plugin class parses only the header; the size is checked before any decoding.
            im = _PIL_PLUGINS[fmt](fh)
            width, height = im.size
            if expect is not None and (height, width) != tuple(expect):
                raise ImageReadError(path, f"shape {(height, width)} differs from the expected {tuple(expect)}")
            _check_pixels(path, (height, width), max_pixels)
            im.load()
    except ImageReadError:
        raise
    except Exception as exc:  # Pillow raises many types (OSError, SyntaxError, zlib.error, ...)
        raise ImageReadError(path, f"cannot decode {fmt} ({exc})") from exc
    return im


def _read_pil(path: Path, fmt: str, max_pixels: int, palette_indices: bool) -> np.ndarray:
    """Decode a PNG/JPEG/BMP with Pillow into an array (see :func:`_pil_to_array`)."""
    im = _load_pil(path, fmt, max_pixels)
    try:
        return _pil_to_array(im, palette_indices)
    except Exception as exc:
        raise ImageReadError(path, f"cannot convert {fmt} mode {im.mode} ({exc})") from exc


def _pil_to_array(im: Image.Image, palette_indices: bool) -> np.ndarray:
    """Convert a loaded Pillow image to an array, keeping bit depth; alpha is dropped later."""
    mode = im.mode
    if mode == "1":
        return np.asarray(im.convert("L"))
    if mode in ("L", "I", "F", "RGB"):
        arr = np.asarray(im)
        return arr.astype(np.float32) if mode == "F" else arr
    if mode.startswith("I;16"):
        return np.asarray(im).astype(np.uint16)
    if mode in ("P", "PA"):
        if palette_indices:
            return np.asarray(im.getchannel(0) if mode == "PA" else im)
        return np.asarray(im.convert("RGBA"))[..., :3]
    if mode in ("LA", "La"):
        return np.asarray(im.getchannel(0))
    if mode in ("RGBA", "RGBa", "RGBX"):
        return np.asarray(im)[..., :3]
    return np.asarray(im.convert("RGB"))  # CMYK, YCbCr, LAB, HSV


def _read_tiff(path: Path, max_pixels: int) -> np.ndarray:
    """Read the first series of a TIFF with singleton axes removed and channels last."""
    try:
        with tifffile.TiffFile(path) as tif:
            if not tif.series:
                raise ImageReadError(path, "TIFF holds no image data")
            series = tif.series[0]
            shape, axes = tuple(series.shape), str(series.axes)
            samples = shape[-1] if axes.endswith("S") else 1
            _check_pixels(path, shape[:-1] if samples > 1 else shape, max_pixels)
            arr = series.asarray()
    except ImageReadError:
        raise
    except Exception as exc:  # tifffile raises TiffFileError, ValueError, struct.error, ...
        raise ImageReadError(path, f"cannot decode TIFF ({exc})") from exc
    if len(axes) != arr.ndim:  # unknown axes: assume the image plane is last
        axes = "Q" * (arr.ndim - 2) + "YX"
    keep = [i for i, s in enumerate(arr.shape) if s != 1 or axes[i] in "YX"]
    axes = "".join(axes[i] for i in keep)
    arr = arr.reshape([arr.shape[i] for i in keep])
    if arr.ndim == 3 and arr.shape[-1] > 4 and arr.shape[0] in (3, 4):  # planar: channels or colour?
        raise ImageReadError(
            path, f"{arr.shape[0]} planes stored one after another (shape {arr.shape}, axes {axes}), not interleaved RGB: "
            "ambiguous; give --channel N for the nuclear plane (and --axes CYX when asked), or --axes SYX to read them as colour"
        )
    return arr


def _decode(path: str | Path, max_pixels: int, palette_indices: bool) -> np.ndarray:
    """Sniff and decode ``path`` into an array (2-D, or 3-D with channels last)."""
    if not isinstance(max_pixels, (int, np.integer)) or max_pixels < 1:
        raise ValueError(f"max_pixels must be a positive integer, got {max_pixels!r}")
    path = Path(path)
    fmt = _sniff(path)
    if fmt == "tiff":
        return _read_tiff(path, int(max_pixels))
    return _read_pil(path, fmt, int(max_pixels), palette_indices)


def _reject_stack(path: Path, arr: np.ndarray) -> None:
    """Raise for arrays that are not one 2-D plane with at most 4 channels."""
    if arr.ndim > 3 or (arr.ndim == 3 and arr.shape[-1] not in (2, 3, 4)):
        raise ImageReadError(
            path, f"{arr.ndim}-D stack of shape {arr.shape}; give one 2-D gray or RGB plane per file"
        )
    if arr.ndim < 2:
        raise ImageReadError(path, f"not a 2-D image (shape {arr.shape})")
