"""Multi-channel images and time/z stacks: pick the nuclear channel, split a stack into planes.

Axis letters follow tifffile and OME: ``T`` time, ``Z`` depth, ``C`` channel, ``S`` colour
samples (RGB), ``Y``/``X`` the image plane. A TIFF's axes come from its OME or ImageJ metadata
(tifffile's ``series[0].axes``); a dimension without a known letter (tifffile's ``Q`` or ``I``)
must be named with ``axes=`` (``--axes`` on the command line), otherwise the file is refused with
one line naming the choices. Channels are chosen by index or by name (OME ``Channel/@Name``,
ImageJ slice labels); ``T`` and ``Z`` become planes, each segmented on its own.

Without ``channel`` and ``axes`` a one-plane gray or RGB file gives exactly what
:func:`nucleiseg.io.read_image` gives (it is read by it), so 2-D inputs are unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile

from nucleiseg.io.atomic import atomic_path
from nucleiseg.io.images import DEFAULT_MAX_PIXELS, ImageReadError, _check_pixels, _sniff, read_image, standard_dtype

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
    """

    planes: np.ndarray
    stack_axes: str = ""
    stack_shape: tuple[int, ...] = ()
    channel: int | None = None
    channel_name: str | None = None

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
    if axes:
        ax = _check_axes(axes, arr.ndim, shape)
    elif file_axes and len(file_axes) == arr.ndim:
        ax = file_axes.upper()
    elif arr.ndim == 2:
        ax = "YX"
    elif arr.ndim == 3 and shape[-1] in (3, 4):
        ax = "YXS"
    else:
        ax = "Q" * (arr.ndim - 2) + "YX"
    if arr.ndim < 2 or "Y" not in ax or "X" not in ax:
        raise ValueError(f"not an image: shape {shape}, axes {ax!r}")
    keep = [i for i, (a, s) in enumerate(zip(ax, shape, strict=True)) if s != 1 or a in "YX"]
    arr = arr.reshape([shape[i] for i in keep])
    ax = "".join(ax[i] for i in keep)
    unknown = [a for a in ax if a not in _KNOWN]
    if unknown:  # (a planar RGB file without metadata never gets here: read_planes reads it with read_image)
        raise ValueError(
            f"ambiguous axes: shape {tuple(arr.shape)} has {len(unknown)} unnamed dimension(s); "
            f"give the axis order with --axes (Python: axes=), e.g. {_options(ax)}"
        )
    chan_axes = [a for a in ax if a in "CS"]
    if len(chan_axes) > 1:
        raise ValueError(f"both channel (C) and colour (S) dimensions in axes {ax!r}; pick one with --channel after naming one of them Z or T")
    chosen: int | None = None
    chosen_name: str | None = None
    if chan_axes:
        c = ax.index(chan_axes[0])
        size = arr.shape[c]
        if channel is not None:
            chosen, chosen_name = _pick_channel(channel, size, names)
            arr, ax = np.take(arr, chosen, axis=c), ax.replace(chan_axes[0], "")
        elif size > 4:
            listed = f" ({', '.join(names[:size])})" if names else ""
            raise ValueError(
                f"{size} channels{listed}: pick the nuclear one with --channel 0..{size - 1}"
                + (" or --channel NAME" if names else "")
            )
        else:
            arr = np.moveaxis(arr, c, -1)
            ax = ax.replace(chan_axes[0], "") + "S"
            arr = arr[..., 0] if size == 2 else arr[..., :3]
            ax = ax[:-1] if size == 2 else ax
    elif channel is not None:
        if isinstance(channel, str) or int(channel) != 0:
            raise ValueError(f"no channel dimension (axes {ax!r}, shape {tuple(arr.shape)}); drop --channel or give --axes with a C")
    stack = "".join(a for a in ax if a in STACK_AXES)
    order = [ax.index(a) for a in stack] + [ax.index("Y"), ax.index("X")] + ([ax.index("S")] if "S" in ax else [])
    arr = np.transpose(arr, order)
    stack_shape = tuple(int(s) for s in arr.shape[: len(stack)])
    planes = arr.reshape((-1, *arr.shape[len(stack):]))
    return Planes(standard_dtype(planes), stack, stack_shape, chosen, chosen_name)


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
) -> Planes:
    """Read an image file as planes to segment (see :func:`resolve_planes`).

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

    Raises
    ------
    ImageReadError
        ``"<path>: <problem>"`` for unreadable files, ambiguous axes and bad channel choices.
    """
    path = Path(path)
    try:
        if _sniff(path) != "tiff":
            image = read_image(path, max_pixels=max_pixels)
            return resolve_planes(image, axes, channel)
        with tifffile.TiffFile(path) as tif:
            if not tif.series:
                raise ImageReadError(path, "TIFF holds no image data")
            series = tif.series[0]
            shape, file_axes = tuple(int(s) for s in series.shape), str(series.axes)
            if len(shape) > 2 and int(np.prod(shape)) <= 1:  # tifffile cannot even name its axes apart (YXYX)
                raise ImageReadError(path, f"TIFF holds a single pixel (shape {shape}): nothing to segment")
            kept = [(a, s) for a, s in zip(file_axes, shape, strict=True) if s != 1 or a in "YX"]
            squeezed = "".join(a for a, _ in kept)
            # One gray or colour plane: read_image reads it, so 2-D inputs stay exactly as before.
            simple = channel is None and axes is None and (
                squeezed in ("YX", "YXS") or (len(kept) == 3 and squeezed[0] in "CSQ" and kept[0][1] in (3, 4))
            )
            if not simple:
                samples = shape[-1] if file_axes.endswith("S") else 1
                _check_pixels(path, shape[:-1] if samples > 1 else shape, max_pixels)
                names = _tiff_channel_names(tif, file_axes, shape)
                data = series.asarray()
        if simple:
            return resolve_planes(read_image(path, max_pixels=max_pixels), None, None)
        return resolve_planes(data, axes, channel, names, file_axes)
    except ImageReadError:
        raise
    except ValueError as exc:
        raise ImageReadError(path, str(exc)) from None
    except Exception as exc:  # tifffile raises TiffFileError, struct.error, ...
        raise ImageReadError(path, f"cannot decode TIFF ({exc})") from exc


def write_label_stack(path: str | Path, labels: np.ndarray, axes: str) -> None:
    """Write a label stack atomically as a zlib TIFF that Fiji opens as a stack.

    ``uint16`` stacks whose axes ImageJ accepts get ImageJ hyperstack metadata (Fiji shows the
    T/Z sliders); ``uint32`` stacks (more than 65,535 nuclei in a plane) keep their axes in
    tifffile's metadata.
    """
    labels = np.asarray(labels)
    if labels.ndim != len(axes) or labels.dtype.kind not in "iu" or (labels.size and labels.min() < 0):
        raise ValueError(f"{path}: labels must be non-negative integers with axes {axes!r}, got {labels.dtype} {labels.shape}")
    top = int(labels.max()) if labels.size else 0
    imagej_order = [_IMAGEJ_ORDER.index(a) for a in axes]
    with atomic_path(path) as tmp:
        if top <= 65535 and imagej_order == sorted(imagej_order):
            tifffile.imwrite(tmp, labels.astype(np.uint16), imagej=True, metadata={"axes": axes}, compression="zlib")
        else:
            tifffile.imwrite(tmp, labels.astype(np.uint32), metadata={"axes": axes}, compression="zlib", photometric="minisblack")
