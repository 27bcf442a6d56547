"""Multi-channel images and time/z stacks: pick the nuclear channel, split a stack into planes.

Axis letters follow tifffile and OME: ``T`` time, ``Z`` depth, ``C`` channel, ``S`` colour
samples (RGB), ``Y``/``X`` the image plane. A TIFF's axes come from its OME or ImageJ metadata
(tifffile's ``series[0].axes``); a dimension without a known letter (tifffile's ``Q`` or ``I``)
must be named with ``axes=`` (``--axes`` on the command line), otherwise the file is refused with
one line naming the choices. Channels are chosen by index or by name (OME ``Channel/@Name``,
ImageJ slice labels); ``T`` and ``Z`` become planes, each segmented on its own.

Without ``channel`` and ``axes`` a one-plane gray or RGB file gives exactly what
:func:`nucleiseg.io.read_image` gives (it is read by it), so 2-D inputs are unchanged.

Only interleaved colour (a ``YXS`` file: RGB or RGBA samples side by side in each pixel) is read
as colour without being asked. Planes stored one after another are ambiguous: a 3-plane file of
(actin, brightfield, DAPI) written without metadata looks like planar RGB. A channel dimension
(``C``) of two or more planes, and planar colour (``SYX``) from the file, are refused with one line
that asks for ``--channel`` (the nuclear plane) or ``--axes`` with ``S`` (read them as colour).

:func:`read_planes` also reads the pixel size (:mod:`nucleiseg.io.units`) into :attr:`Planes.pixel_size`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tifffile

from nucleiseg.io.atomic import atomic_path
from nucleiseg.io.decode import ImageReadError, _check_pixels, _sniff
from nucleiseg.io.images import DEFAULT_MAX_PIXELS, read_image, standard_dtype
from nucleiseg.io.units import PixelSize, pixel_size_of, resolution_tags, tiff_pixel_size

__all__ = ["STACK_AXES", "Planes", "parse_channel", "read_planes", "resolve_planes", "write_label_stack"]

#: Axis letters segmented plane by plane.
STACK_AXES = "TZ"
_KNOWN = "TZCSYX"
_IMAGEJ_ORDER = "TZCYXS"


@dataclass
class Planes:
    """An image split into the 2-D planes to segment.

    Attributes
    ----------
    planes : ndarray, shape (P, H, W) or (P, H, W, 3)
        The planes, gray or RGB; ``P == 1`` for a plain image.
    stack_axes : str
        Letters of the stack dimensions in file order (``""``, ``"Z"``, ``"T"``, ``"TZ"``).
    stack_shape : tuple of int
        Their sizes; ``planes`` holds ``prod(stack_shape)`` planes in C order.
    channel : int or None
        Index of the chosen channel, None when all channels were kept.
    channel_name : str or None
        Its name in the file's metadata, when there is one.
    pixel_size : PixelSize
        µm per pixel and its source (metadata, the user's option, or none).
    """

    planes: np.ndarray
    stack_axes: str = ""
    stack_shape: tuple[int, ...] = ()
    channel: int | None = None
    channel_name: str | None = None
    pixel_size: PixelSize = field(default_factory=PixelSize)

    @property
    def is_stack(self) -> bool:
        """True when the input had a time or z dimension (labels keep it)."""
        return bool(self.stack_axes)

    @property
    def image(self) -> np.ndarray:
        """The single plane of a non-stack input."""
        if self.is_stack:
            raise ValueError(f"a {self.stack_axes} stack of {len(self.planes)} planes has no single image")
        return self.planes[0]

    @property
    def label_axes(self) -> str:
        """Axes of the label stack: the stack axes then ``YX``."""
        return self.stack_axes + "YX"


def parse_channel(value: str | int | None) -> int | str | None:
    """``"2"`` -> 2, ``"dapi"`` -> ``"dapi"``, None -> None (command-line and form values)."""
    if value is None or isinstance(value, int):
        return value
    text = str(value).strip()
    if not text:
        return None
    return int(text) if text.lstrip("-").isdigit() else text


def _check_axes(axes: str, ndim: int, shape: tuple[int, ...]) -> str:
    axes = axes.strip().upper()
    if len(axes) != ndim:
        raise ValueError(f"axes {axes!r} has {len(axes)} letters but the image has {ndim} dimensions (shape {shape})")
    bad = sorted(set(axes) - set(_KNOWN))
    if bad or len(set(axes)) != len(axes) or "Y" not in axes or "X" not in axes:
        raise ValueError(f"axes {axes!r} must use each of T, Z, C, S, Y, X at most once and include Y and X")
    return axes


def _options(axes: str) -> str:
    """Suggested ``--axes`` values for the unknown dimensions of ``axes``."""
    unknown = [i for i, a in enumerate(axes) if a not in _KNOWN]
    picks = []
    for letters in (("Z",), ("T",), ("C",), ("T", "Z"), ("T", "C"), ("Z", "C")):
        if len(letters) != len(unknown):
            continue
        guess = list(axes)
        for i, letter in zip(unknown, letters, strict=True):
            guess[i] = letter
        if len(set(guess)) == len(guess):
            picks.append("".join(guess))
    return ", ".join(picks) if picks else "letters from T, Z, C, Y, X"


def _pick_channel(channel: int | str, size: int, names: list[str]) -> tuple[int, str | None]:
    if isinstance(channel, str):
        lowered = [n.lower() for n in names]
        if channel.lower() not in lowered:
            known = f"channel names: {', '.join(names)}" if names else "the file names no channels"
            raise ValueError(f"no channel named {channel!r} ({known}); give an index 0..{size - 1}")
        index = lowered.index(channel.lower())
    else:
        index = int(channel)
        if not 0 <= index < size:
            raise ValueError(f"channel {index} out of range: the image has {size} channels (0..{size - 1})")
    return index, names[index] if index < len(names) else None


def resolve_planes(
    array: np.ndarray,
    axes: str | None = None,
    channel: int | str | None = None,
    channel_names: list[str] | None = None,
    file_axes: str | None = None,
) -> Planes:
    """Split an array into planes to segment, choosing the channel.

    Parameters
    ----------
    array : ndarray
        The image, any number of dimensions.
    axes : str, optional
        One letter per dimension (``"ZYX"``, ``"CYX"``, ``"TCYX"``, ``"YXC"``); overrides
        ``file_axes``. Without either, 2-D arrays are ``YX`` and ``(H, W, 3|4)`` arrays RGB.
    channel : int or str, optional
        The nuclear channel: an index, or a name from ``channel_names`` (case-insensitive).
    channel_names : list of str, optional
        Channel names from the file's metadata.
    file_axes : str, optional
        Axes read from the file (letters other than T, Z, C, S, Y, X mean "unknown").

    Returns
    -------
    Planes

    Raises
    ------
    ValueError
        A one-line message for ambiguous axes, an unknown channel or a missing choice.
    """
    arr = np.asarray(array)
    shape = tuple(int(s) for s in arr.shape)
    names = list(channel_names or [])
    ax = _named_axes(arr.ndim, shape, axes, file_axes)
    arr, ax = _squeeze(arr, ax)
    arr, ax, chosen, chosen_name = _take_channel(arr, ax, channel, names, user_axes=bool(axes))
    stack, stack_shape, planes = _split_stack(arr, ax)
    return Planes(standard_dtype(planes), stack, stack_shape, chosen, chosen_name)


def _named_axes(ndim: int, shape: tuple[int, ...], axes: str | None, file_axes: str | None) -> str:
    """One letter per dimension: the user's ``axes``, else the file's, else a guess (``Q``: unknown)."""
    if axes:
        ax = _check_axes(axes, ndim, shape)
    elif file_axes and len(file_axes) == ndim:
        ax = file_axes.upper()
    elif ndim == 2:
        ax = "YX"
    elif ndim == 3 and shape[-1] in (3, 4):
        ax = "YXS"
    else:
        ax = "Q" * (ndim - 2) + "YX"
    if ndim < 2 or "Y" not in ax or "X" not in ax:
        raise ValueError(f"not an image: shape {shape}, axes {ax!r}")
    return ax


def _squeeze(arr: np.ndarray, ax: str) -> tuple[np.ndarray, str]:
    """Drop the dimensions of size 1 (except ``Y`` and ``X``); refuse the unnamed ones left."""
    shape = arr.shape
    keep = [i for i, (a, s) in enumerate(zip(ax, shape, strict=True)) if s != 1 or a in "YX"]
    arr = arr.reshape([shape[i] for i in keep])
    ax = "".join(ax[i] for i in keep)
    unknown = [a for a in ax if a not in _KNOWN]
    if unknown:  # e.g. 3 pages of a TIFF without metadata: channels, or z planes?
        raise ValueError(
            f"ambiguous axes: shape {tuple(arr.shape)} has {len(unknown)} unnamed dimension(s); "
            f"give the axis order with --axes (Python: axes=), e.g. {_options(ax)} (with C, also --channel N)"
        )
    return arr, ax


def _take_channel(
    arr: np.ndarray, ax: str, channel: int | str | None, names: list[str], user_axes: bool
) -> tuple[np.ndarray, str, int | None, str | None]:
    """Keep the chosen channel (or the colour samples, as the last ``S`` axis).

    Returns the array, its axes, and the chosen channel's index and name (None without a choice).
    """
    chan_axes = [a for a in ax if a in "CS"]
    if len(chan_axes) > 1:
        raise ValueError(f"both channel (C) and colour (S) dimensions in axes {ax!r}; pick one with --channel after naming one of them Z or T")
    if chan_axes and channel is None:
        _refuse_ambiguous(ax, tuple(arr.shape), names, user_axes=user_axes)
    if not chan_axes:
        if channel is not None and (isinstance(channel, str) or int(channel) != 0):
            raise ValueError(f"no channel dimension (axes {ax!r}, shape {tuple(arr.shape)}); drop --channel or give --axes with a C")
        return arr, ax, None, None
    c = ax.index(chan_axes[0])
    size = arr.shape[c]
    if channel is not None:
        chosen, chosen_name = _pick_channel(channel, size, names)
        return np.take(arr, chosen, axis=c), ax.replace(chan_axes[0], ""), chosen, chosen_name
    # colour samples (S) of at most 4: _refuse_ambiguous let them through
    arr = np.moveaxis(arr, c, -1)
    ax = ax.replace(chan_axes[0], "") + "S"
    arr = arr[..., 0] if size == 2 else arr[..., :3]
    return arr, ax[:-1] if size == 2 else ax, None, None


def _split_stack(arr: np.ndarray, ax: str) -> tuple[str, tuple[int, ...], np.ndarray]:
    """Stack axes (T, Z in file order), their sizes, and the planes ``(P, H, W[, S])`` in C order."""
    stack = "".join(a for a in ax if a in STACK_AXES)
    order = [ax.index(a) for a in stack] + [ax.index("Y"), ax.index("X")] + ([ax.index("S")] if "S" in ax else [])
    arr = np.transpose(arr, order)
    stack_shape = tuple(int(s) for s in arr.shape[: len(stack)])
    return stack, stack_shape, arr.reshape((-1, *arr.shape[len(stack):]))


def _refuse_ambiguous(ax: str, shape: tuple[int, ...], names: list[str], user_axes: bool) -> None:
    """Raise for channels that would otherwise be guessed: only interleaved colour is read as colour.

    A ``C`` dimension of two or more planes needs ``--channel``; colour samples (``S``) are
    read as colour when they are interleaved (``S`` last), or when the user named them with
    ``--axes``; planar colour from a file's own axes is refused (3 planes written without
    metadata look exactly like it).
    """
    letter = "C" if "C" in ax else "S"
    size = shape[ax.index(letter)]
    if letter == "S" and size <= 4 and (user_axes or ax.endswith("S")):
        return
    listed = f" ({', '.join(names[:size])})" if names else ""
    pick = f"pick the nuclear one with --channel 0..{size - 1}" + (" or --channel NAME" if names else "")
    if size > 4:
        raise ValueError(f"{size} channels{listed}: {pick}")
    stored = "planes stored one after another, not interleaved RGB" if letter == "S" else "channels"
    colour = "".join("S" if a == letter else a for a in ax)
    raise ValueError(f"{size} {stored}{listed}: ambiguous; {pick}, or give --axes {colour} to read them as colour")


def _tiff_channel_names(tif: tifffile.TiffFile, axes: str, shape: tuple[int, ...]) -> list[str]:
    """Channel names from OME ``Channel/@Name`` or ImageJ slice labels (first ``C`` labels)."""
    size = shape[axes.index("C")] if "C" in axes else 0
    if tif.is_ome and tif.ome_metadata:
        pixels = tifffile.xml2dict(tif.ome_metadata).get("OME", {}).get("Image", {})
        pixels = (pixels[0] if isinstance(pixels, list) else pixels).get("Pixels", {})
        found = pixels.get("Channel", [])
        found = found if isinstance(found, list) else [found]
        names = [str(ch.get("Name", "")) if isinstance(ch, dict) else "" for ch in found]
        return names if any(names) else []
    if tif.is_imagej and size:
        labels = (tif.imagej_metadata or {}).get("Labels") or []
        if isinstance(labels, list) and len(labels) >= size:
            return [str(x) for x in labels[:size]]
    return []


def read_planes(
    path: str | Path,
    channel: int | str | None = None,
    axes: str | None = None,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    pixel_size: float | None = None,
) -> Planes:
    """Read an image file as planes to segment (see :func:`resolve_planes`) with its pixel size.

    Parameters
    ----------
    path : str or Path
        PNG, TIFF (incl. OME-TIFF and ImageJ hyperstacks), JPEG or BMP.
    channel : int or str, optional
        Nuclear channel, by index or metadata name.
    axes : str, optional
        Axis letters for files without (or with wrong) axis metadata.
    max_pixels : int
        Refuse files whose header claims more pixels (all planes together).
    pixel_size : float, optional
        µm per pixel given by the user; overrides the file's metadata (:mod:`nucleiseg.io.units`).

    Raises
    ------
    ImageReadError
        ``"<path>: <problem>"`` for unreadable files, ambiguous axes and bad channel choices.
    """
    path = Path(path)
    try:
        if _sniff(path) != "tiff":
            image = read_image(path, max_pixels=max_pixels)
            return _with_size(resolve_planes(image, axes, channel), pixel_size_of(None, pixel_size))
        with tifffile.TiffFile(path) as tif:
            if not tif.series:
                raise ImageReadError(path, "TIFF holds no image data")
            series = tif.series[0]
            shape, file_axes = tuple(int(s) for s in series.shape), str(series.axes)
            if len(shape) > 2 and int(np.prod(shape)) <= 1:  # tifffile cannot even name its axes apart (YXYX)
                raise ImageReadError(path, f"TIFF holds a single pixel (shape {shape}): nothing to segment")
            kept = [(a, s) for a, s in zip(file_axes, shape, strict=True) if s != 1 or a in "YX"]
            squeezed = "".join(a for a, _ in kept)
            size = pixel_size_of(tiff_pixel_size(tif), pixel_size)
            # One gray or interleaved colour plane: read_image reads it, so 2-D inputs stay as before.
            simple = channel is None and axes is None and squeezed in ("YX", "YXS")
            if not simple:
                samples = shape[-1] if file_axes.endswith("S") else 1
                _check_pixels(path, shape[:-1] if samples > 1 else shape, max_pixels)
                names = _tiff_channel_names(tif, file_axes, shape)
                data = series.asarray()
        if simple:
            return _with_size(resolve_planes(read_image(path, max_pixels=max_pixels), None, None), size)
        return _with_size(resolve_planes(data, axes, channel, names, file_axes), size)
    except ImageReadError:
        raise
    except ValueError as exc:
        raise ImageReadError(path, str(exc)) from None
    except Exception as exc:  # tifffile raises TiffFileError, struct.error, ...
        raise ImageReadError(path, f"cannot decode TIFF ({exc})") from exc


def _with_size(planes: Planes, size: PixelSize) -> Planes:
    planes.pixel_size = size
    return planes


def write_label_stack(path: str | Path, labels: np.ndarray, axes: str, pixel_size: float | None = None) -> None:
    """Write a label stack atomically as a zlib TIFF that Fiji opens as a stack.

    ``uint16`` stacks whose axes ImageJ accepts get ImageJ hyperstack metadata (Fiji shows the
    T/Z sliders); ``uint32`` stacks (more than 65,535 nuclei in a plane) keep their axes in
    tifffile's metadata. ``pixel_size`` (µm) is stored as ImageJ's calibration (or as TIFF
    resolution tags for ``uint32``).
    """
    labels = np.asarray(labels)
    if labels.ndim != len(axes) or labels.dtype.kind not in "iu" or (labels.size and labels.min() < 0):
        raise ValueError(f"{path}: labels must be non-negative integers with axes {axes!r}, got {labels.dtype} {labels.shape}")
    top = int(labels.max()) if labels.size else 0
    imagej_order = [_IMAGEJ_ORDER.index(a) for a in axes]
    with atomic_path(path) as tmp:
        if top <= 65535 and imagej_order == sorted(imagej_order):
            meta = {"axes": axes, **({"unit": "um"} if pixel_size is not None else {})}
            tifffile.imwrite(tmp, labels.astype(np.uint16), imagej=True, metadata=meta, compression="zlib",
                             **resolution_tags(pixel_size, imagej=True))
        else:
            tifffile.imwrite(tmp, labels.astype(np.uint32), metadata={"axes": axes}, compression="zlib", photometric="minisblack",
                             **resolution_tags(pixel_size))
