"""Reading and writing microscopy images and label images.

Images are returned as numpy arrays, gray ``(H, W)`` or RGB ``(H, W, 3)``, with their stored dtype
(``uint8``, ``uint16`` or ``float32``). Every file is checked before decoding: the pixel count in
its header is compared with a cap so that a small file claiming a huge size (a decompression bomb)
is refused without allocating memory. Any unreadable file raises :class:`ImageReadError`.

TIFF files are read with ``tifffile``; PNG, JPEG and BMP with Pillow. Pillow reduces 16-bit
*colour* PNGs to 8 bits per channel; store such data as TIFF to keep the full range. Only
interleaved RGB(A) is colour: a TIFF of 3 or 4 planes stored one after another (planar RGB, an
ImageJ/OME ``CYX`` file, or pages without metadata) is refused as ambiguous
(:func:`nucleiseg.io.stacks.read_planes` reads it with a channel or axes).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from nucleiseg.io.atomic import atomic_path
from nucleiseg.io.decode import _PIL_PLUGINS, ImageReadError, _check_pixels, _decode, _reject_stack, _sniff
from nucleiseg.io.units import parse_diameter, resolution_tags  # parse_diameter: for the napari widget

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_SUFFIXES",
    "ImageReadError",
    "parse_diameter",
    "read_image",
    "read_image_shape",
    "read_labels",
    "to_uint8_rgb",
    "write_image",
    "write_labels",
]

#: Largest number of pixels (height x width x planes) a file may claim before it is refused.
DEFAULT_MAX_PIXELS = 400_000_000

#: File name suffixes recognised as images when folders are searched.
IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")


def read_image(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read a PNG, TIFF, JPEG or BMP file as a gray or RGB array.

    Parameters
    ----------
    path : str or Path
        Image file; the format is recognised from its content, not its name.
    max_pixels : int, optional
        Refuse files whose header claims more pixels than this (checked before decoding).

    Returns
    -------
    numpy.ndarray
        ``(H, W)`` gray or ``(H, W, 3)`` RGB. Alpha is dropped, palettes are expanded to RGB,
        gray+alpha becomes gray and singleton TIFF axes are removed. ``uint8``/``uint16`` are
        kept, floating point becomes ``float32``, booleans become ``uint8`` 0/255.

    Raises
    ------
    ImageReadError
        Missing, empty, truncated, non-image or oversized files, and 3-D stacks.
    """
    path = Path(path)
    arr = _decode(path, max_pixels, palette_indices=False)
    _reject_stack(path, arr)
    if arr.ndim == 3:
        arr = arr[..., 0] if arr.shape[-1] == 2 else arr[..., :3]
    return standard_dtype(arr)


def standard_dtype(arr: np.ndarray) -> np.ndarray:
    """The dtypes images are handed on in: booleans become ``uint8`` 0/255, floats ``float32``; contiguous."""
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype.kind == "f" and arr.dtype != np.float32:
        arr = arr.astype(np.float32)
    return np.ascontiguousarray(arr)


def read_image_shape(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """Return ``(H, W)`` of an image file, decoding only its header when possible."""
    path = Path(path)
    fmt = _sniff(path)
    if fmt == "tiff":
        try:
            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                shape, axes = tuple(series.shape), str(series.axes)
        except Exception as exc:
            raise ImageReadError(path, f"cannot read TIFF header ({exc})") from exc
        if "Y" in axes and "X" in axes and len(axes) == len(shape):
            return int(shape[axes.index("Y")]), int(shape[axes.index("X")])
        return read_image(path, max_pixels=max_pixels).shape[:2]  # type: ignore[return-value]
    plugin = _PIL_PLUGINS[fmt]
    try:
        with open(path, "rb") as fh:
            width, height = plugin(fh).size
    except Exception as exc:
        raise ImageReadError(path, f"cannot read {fmt} header ({exc})") from exc
    _check_pixels(path, (height, width), max_pixels)
    return int(height), int(width)


def _colours_to_ids(rgb: np.ndarray) -> np.ndarray:
    """Map each distinct colour of an RGB label image to an id 1..n (black stays 0)."""
    flat = rgb.reshape(-1, 3)
    if rgb.dtype == np.uint8:
        code = (flat[:, 0].astype(np.uint32) << 16) | (flat[:, 1].astype(np.uint32) << 8) | flat[:, 2]
        colours, inverse = np.unique(code, return_inverse=True)
        black = colours == 0
    else:
        colours, inverse = np.unique(flat, axis=0, return_inverse=True)
        black = ~colours.any(axis=1)
    ids = np.cumsum(~black) * ~black
    return ids[inverse.ravel()].reshape(rgb.shape[:2])


def read_labels(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an integer label image (0 = background).

    Palette images give their palette indices, binary 0/255 masks give 0/1, RGB label images
    whose channels are equal give one channel, other RGB label images give one id per colour.

    Returns
    -------
    numpy.ndarray
        ``(H, W)`` ``int32``, or ``uint32`` when ids exceed the ``int32`` range.

    Raises
    ------
    ImageReadError
        Unreadable files, stacks, negative or non-integer values.
    """
    path = Path(path)
    arr = _decode(path, max_pixels, palette_indices=True)
    _reject_stack(path, arr)
    if arr.ndim == 3:
        arr = arr[..., :3] if arr.shape[-1] >= 3 else arr[..., 0]
        if arr.ndim == 3:
            same = np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2])
            arr = arr[..., 0] if same else _colours_to_ids(arr)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.array_equal(arr, np.round(arr)):
            raise ImageReadError(path, "label image holds non-integer values")
    elif arr.dtype.kind not in "biu":
        raise ImageReadError(path, f"unsupported label dtype {arr.dtype}")
    if arr.size and arr.min() < 0:
        raise ImageReadError(path, "label image holds negative values")
    top = int(arr.max()) if arr.size else 0
    if top > np.iinfo(np.uint32).max:
        raise ImageReadError(path, f"label id {top} exceeds the uint32 range")
    if arr.dtype == np.uint8 and top == 255 and not np.any((arr > 0) & (arr < 255)):
        return (arr > 0).astype(np.int32)  # binary 0/255 mask
    dtype = np.int32 if top <= np.iinfo(np.int32).max else np.uint32
    return np.ascontiguousarray(arr, dtype=dtype)


def _check_labels(labels: np.ndarray) -> np.ndarray:
    """Validate a label array for writing and return it as a non-negative integer array."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be a 2-D array, got shape {labels.shape}")
    if labels.dtype == bool:
        return labels.astype(np.uint8)
    if labels.dtype.kind not in "iu":
        raise ValueError(f"labels must hold integers, got dtype {labels.dtype}")
    if labels.size and labels.min() < 0:
        raise ValueError("labels must be non-negative")
    return labels


def write_labels(path: str | Path, labels: np.ndarray, pixel_size: float | None = None) -> None:
    """Write a label image atomically: 16-bit PNG, or zlib-compressed 16/32-bit TIFF.

    Parameters
    ----------
    path : str or Path
        Target file; ``.png`` (ids up to 65,535) or ``.tif``/``.tiff`` (``uint16`` when the ids
        fit, else ``uint32``).
    labels : numpy.ndarray
        ``(H, W)`` non-negative integer labels.
    pixel_size : float, optional
        µm per pixel, written into a TIFF's resolution tags (per centimetre), where
        :func:`nucleiseg.io.units.tiff_pixel_size`, Fiji and QuPath find it.

    Raises
    ------
    ValueError
        Bad labels, an unsupported suffix, or ids above 65,535 for PNG.
    """
    path = Path(path)
    labels = _check_labels(labels)
    suffix = path.suffix.lower()
    top = int(labels.max()) if labels.size else 0
    if suffix == ".png":
        if top > 65535:
            raise ValueError(f"{path}: PNG label images hold ids up to 65535, got {top}; write a .tif instead")
        with atomic_path(path) as tmp:
            Image.fromarray(labels.astype(np.uint16)).save(tmp, format="PNG")
    elif suffix in (".tif", ".tiff"):
        if top > np.iinfo(np.uint32).max:
            raise ValueError(f"{path}: label id {top} exceeds the uint32 range")
        dtype = np.uint16 if top <= 65535 else np.uint32
        with atomic_path(path) as tmp:
            tifffile.imwrite(tmp, labels.astype(dtype), compression="zlib", photometric="minisblack", **resolution_tags(pixel_size))
    else:
        raise ValueError(f"{path}: label images are written as .png, .tif or .tiff, not {path.suffix or 'no suffix'}")


def write_image(path: str | Path, image: np.ndarray) -> None:
    """Write a ``uint8`` gray or RGB image atomically as PNG (or JPEG/TIFF by suffix)."""
    path = Path(path)
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"write_image expects uint8 data, got {image.dtype}; use to_uint8_rgb first")
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[-1] in (3, 4))):
        raise ValueError(f"write_image expects (H, W) or (H, W, 3|4), got shape {image.shape}")
    suffix = path.suffix.lower()
    with atomic_path(path) as tmp:
        if suffix == ".png":
            Image.fromarray(image).save(tmp, format="PNG")
        elif suffix in (".jpg", ".jpeg"):
            Image.fromarray(image[..., :3] if image.ndim == 3 else image).save(tmp, format="JPEG", quality=95)
        elif suffix in (".tif", ".tiff"):
            tifffile.imwrite(tmp, image, compression="zlib")
        else:
            raise ValueError(f"{path}: images are written as .png, .jpg or .tif, not {path.suffix or 'no suffix'}")


def to_uint8_rgb(image: np.ndarray, low: float = 1.0, high: float = 99.8) -> np.ndarray:
    """Convert any gray/RGB image to ``uint8`` RGB for display.

    ``uint8`` data is kept as is; other dtypes are stretched so that the ``low``..``high``
    percentiles (over all channels) map to 0..255. Gray is replicated to three channels.
    """
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim == 3 and image.shape[-1] == 4:
        image = image[..., :3]
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[-1] == 3)):
        raise ValueError(f"expected a (H, W) or (H, W, 3) image, got shape {image.shape}")
    if image.dtype == bool:
        out = image.astype(np.uint8) * 255
    elif image.dtype == np.uint8:
        out = image
    else:
        data = image.astype(np.float32)
        finite = data[np.isfinite(data)]
        if finite.size == 0:
            out = np.zeros(image.shape, np.uint8)
        else:
            lo, hi = np.percentile(finite, [low, high])
            scale = 255.0 / (hi - lo) if hi > lo else 0.0
            data = np.nan_to_num(data, nan=lo, posinf=hi, neginf=lo)
            out = np.clip((data - lo) * scale + 0.5, 0, 255).astype(np.uint8)
    if out.ndim == 2:
        out = np.repeat(out[..., None], 3, axis=2)
    return np.ascontiguousarray(out)
