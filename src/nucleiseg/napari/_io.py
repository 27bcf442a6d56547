"""napari reader and writer for nucleiseg label images (``*_masks.tif``, 2-D or stacks).

The reader reads 2-D masks with :func:`nucleiseg.io.read_labels` (the same rules as every other
reader: a planar multi-plane file is refused, not guessed) and puts the pixel size the masks
carry (:func:`nucleiseg.io.units.tiff_pixel_size`) into the layer's metadata as
``metadata["nucleiseg"]["pixel_size_um"]``. It sets no ``scale``: an image layer opened by
another reader without one would no longer line up with the labels.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from nucleiseg.io.images import read_labels, write_labels as _write_2d
from nucleiseg.io.stacks import write_label_stack
from nucleiseg.io.units import tiff_pixel_size

__all__ = ["get_reader", "read_masks", "write_labels"]

_SUFFIXES = ("_masks.tif", "_masks.tiff")


def get_reader(path: str | list[str]) -> Callable[[str | list[str]], list[tuple[Any, ...]]] | None:
    """The reader for ``*_masks.tif`` files (None for anything else, so napari asks another plugin)."""
    paths = [path] if isinstance(path, str) else list(path)
    if not paths or not all(str(p).lower().endswith(_SUFFIXES) for p in paths):
        return None
    return read_masks


def read_masks(path: str | list[str]) -> list[tuple[Any, ...]]:
    """One Labels layer per file: 2-D label images and label stacks (``<id>_masks.tif``)."""
    layers = []
    for p in [path] if isinstance(path, str) else path:
        p = Path(p)
        with tifffile.TiffFile(p) as tif:
            ndim = len([s for s in tif.series[0].shape if s != 1])
            size = tiff_pixel_size(tif)
        labels = read_labels(p) if ndim <= 2 else tifffile.imread(p)
        name = p.name[: -len(next(s for s in _SUFFIXES if p.name.lower().endswith(s)))]
        meta = {"name": f"{name} nuclei", "metadata": {"nucleiseg": {"pixel_size_um": None if size is None else size[0]}}}
        layers.append((np.asarray(labels), meta, "labels"))
    return layers


def write_labels(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """Write a Labels layer as a nucleiseg label image (2-D) or label stack (3-D ``ZYX``, 4-D ``TZYX``).

    The pixel size in the layer's ``metadata["nucleiseg"]["pixel_size_um"]`` goes into the file.
    """
    labels = np.asarray(data)
    found = ((meta or {}).get("metadata") or {}).get("nucleiseg", {}).get("pixel_size_um")
    size = float(found) if isinstance(found, (int, float)) and found > 0 else None
    if labels.ndim == 2:
        _write_2d(path, labels, size)
    elif labels.ndim in (3, 4):
        write_label_stack(path, labels, "TZ"[4 - labels.ndim:] + "YX", size)
    else:
        raise ValueError(f"{path}: labels of {labels.ndim} dimensions; nucleiseg writes 2-D to 4-D label images")
    return [str(path)]
