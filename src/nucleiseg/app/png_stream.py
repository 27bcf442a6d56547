"""PNG encoding from row bands, so that no whole-image copy is made for the encoder.

Pillow's encoder needs the whole image in its own buffer (4 bytes per pixel for RGB), on top
of the array it is given. :func:`png_from_bands` takes the rows a band at a time (an
``(h, row_bytes)`` ``uint8`` array per band), filters them with PNG's adaptive heuristic
(per row, the filter whose output has the smallest sum of absolute signed bytes, as libpng
and Pillow choose) and compresses them with zlib level 3 (the web app's PNG level), so its
memory is the compressed output plus a few copies of one band.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterable, Iterator

import numpy as np

__all__ = ["BAND_BYTES", "band_rows", "png_from_array", "png_from_bands", "png_from_labels"]

#: Raw bytes per band: the encoder's temporaries are about 20 times this.
BAND_BYTES = 1 << 16
_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_COLOUR_TYPES = {1: 0, 3: 2}  # channels -> PNG colour type (gray, RGB)


def band_rows(row_bytes: int, band_bytes: int = BAND_BYTES) -> int:
    """Rows per band for rows of ``row_bytes`` bytes (at least one)."""
    return max(1, band_bytes // max(row_bytes, 1))


def _chunk(out: io.BytesIO, kind: bytes, data: bytes) -> None:
    out.write(struct.pack(">I", len(data)))
    out.write(kind)
    out.write(data)
    out.write(struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)) & 0xFFFFFFFF))


def _signed_sums(candidate: np.ndarray) -> np.ndarray:
    """Per row, the sum of |byte| with each byte read as a signed 8-bit number."""
    return np.abs(candidate.astype(np.uint8).view(np.int8).astype(np.int16)).sum(axis=1, dtype=np.int64)


def _filter_band(rows: np.ndarray, prev: np.ndarray, bpp: int) -> np.ndarray:
    """PNG scanlines (filter byte + filtered bytes) of ``rows``; ``prev`` is the raw row above."""
    x = rows.astype(np.int16)
    up = np.empty_like(x)
    up[0], up[1:] = prev, x[:-1]
    left = np.zeros_like(x)
    left[:, bpp:] = x[:, :-bpp]
    corner = np.zeros_like(x)
    corner[:, bpp:] = up[:, :-bpp]
    pa, pb, pc = np.abs(up - corner), np.abs(left - corner), np.abs(left + up - 2 * corner)
    paeth = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, corner))
    del pa, pb, pc
    out = np.empty((x.shape[0], x.shape[1] + 1), np.uint8)
    out[:, 0] = 0
    out[:, 1:] = rows
    best = _signed_sums(x)
    for code, predictor in ((1, left), (2, up), (3, (left + up) >> 1), (4, paeth)):
        candidate = (x - predictor).astype(np.uint8)
        score = _signed_sums(candidate)
        better = score < best
        if better.any():
            out[better, 0] = code
            out[better, 1:] = candidate[better]
            best = np.where(better, score, best)
    return out


def png_from_bands(width: int, height: int, channels: int, bit_depth: int, bands: Iterable[np.ndarray]) -> bytes:
    """Encode a gray or RGB PNG whose raw rows come band by band.

    Parameters
    ----------
    width, height : int
        Image size in pixels.
    channels : {1, 3}
        Gray or RGB.
    bit_depth : {8, 16}
        Bits per sample; 16-bit samples are big-endian in the rows.
    bands : iterable of numpy.ndarray
        ``uint8`` arrays of shape ``(rows, width * channels * bit_depth // 8)``, top to bottom,
        ``height`` rows in all.

    Returns
    -------
    bytes
        The PNG file.
    """
    if channels not in _COLOUR_TYPES or bit_depth not in (8, 16):
        raise ValueError(f"channels must be 1 or 3 and bit_depth 8 or 16, got {channels} and {bit_depth}")
    bpp = channels * bit_depth // 8
    out = io.BytesIO()
    out.write(_SIGNATURE)
    _chunk(out, b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, _COLOUR_TYPES[channels], 0, 0, 0))
    zipper = zlib.compressobj(3)
    prev = np.zeros(width * bpp, np.int16)
    done = 0
    for band in bands:
        if band.dtype != np.uint8 or band.ndim != 2 or band.shape[1] != width * bpp:
            raise ValueError(f"a band must be uint8 of shape (rows, {width * bpp}), got {band.dtype} {band.shape}")
        if band.shape[0] == 0:
            continue
        data = zipper.compress(_filter_band(band, prev, bpp))
        if data:
            _chunk(out, b"IDAT", data)
        prev = band[-1].astype(np.int16)
        done += band.shape[0]
    if done != height:
        raise ValueError(f"the bands hold {done} rows, the image has {height}")
    _chunk(out, b"IDAT", zipper.flush())
    _chunk(out, b"IEND", b"")
    return out.getvalue()


def _array_bands(array: np.ndarray, rows: int) -> Iterator[np.ndarray]:
    flat = array.reshape(array.shape[0], -1)
    for top in range(0, array.shape[0], rows):
        yield flat[top : top + rows]


def png_from_array(array: np.ndarray) -> bytes:
    """PNG of a ``uint8`` gray ``(H, W)`` or RGB ``(H, W, 3)`` array, encoded band by band."""
    if array.dtype != np.uint8 or not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3)):
        raise ValueError(f"expected a uint8 (H, W) or (H, W, 3) array, got {array.dtype} {array.shape}")
    channels = 1 if array.ndim == 2 else 3
    array = np.ascontiguousarray(array)
    rows = band_rows(array.shape[1] * channels)
    return png_from_bands(array.shape[1], array.shape[0], channels, 8, _array_bands(array, rows))


def png_from_labels(labels: np.ndarray) -> bytes:
    """16-bit gray PNG of a label image whose values are 0..65535, converted band by band."""
    height, width = labels.shape
    rows = band_rows(2 * width)
    bands = (labels[top : top + rows].astype(">u2").view(np.uint8) for top in range(0, height, rows))
    return png_from_bands(width, height, 1, 16, bands)
