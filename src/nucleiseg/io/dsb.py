"""The Kaggle Data Science Bowl 2018 folder layout.

A DSB root holds one folder per sample: ``<root>/<id>/images/<id>.png`` and
``<root>/<id>/masks/*.png`` with one binary mask per nucleus. :func:`load_sample` merges the masks
into one label image and records annotation problems (overlaps, empty masks) instead of hiding them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nucleiseg.io.decode import ImageReadError, _decode, _load_pil, _pil_to_array, _sniff
from nucleiseg.io.images import read_image, read_image_shape

__all__ = [
    "Sample",
    "is_dsb_root",
    "is_dsb_sample",
    "list_samples",
    "load_labels_only",
    "load_sample",
    "mask_paths",
    "merge_masks",
    "sample_image_path",
]


@dataclass
class Sample:
    """One DSB sample: its image, merged instance labels and any annotation problems found.

    Attributes
    ----------
    id : str
        Sample id (the folder name).
    image_path : Path
        ``<dir>/images/<id>.png``.
    image : numpy.ndarray
        Image as returned by :func:`nucleiseg.io.images.read_image`.
    labels : numpy.ndarray
        ``int32`` label image, ids 1..n over the non-empty masks in sorted file order.
    problems : list of str
        One line per problem (overlapping or empty masks).
    """

    id: str
    image_path: Path
    image: np.ndarray
    labels: np.ndarray
    problems: list[str] = field(default_factory=list)


def sample_image_path(sample_dir: str | Path) -> Path:
    """``<dir>/images/<dir name>.png``, the image of a DSB sample folder."""
    sample_dir = Path(sample_dir)
    return sample_dir / "images" / f"{sample_dir.name}.png"


def is_dsb_sample(path: str | Path) -> bool:
    """True if ``path`` is a folder holding ``images/<folder name>.png``."""
    path = Path(path)
    return path.is_dir() and sample_image_path(path).is_file()


def is_dsb_root(path: str | Path) -> bool:
    """True if ``path`` is a folder (not itself a sample) with at least one DSB sample inside."""
    path = Path(path)
    if not path.is_dir() or is_dsb_sample(path):
        return False
    with os.scandir(path) as entries:
        return any(e.is_dir() and is_dsb_sample(e.path) for e in entries)


def list_samples(root: str | Path) -> list[Path]:
    """Sorted sample folders of a DSB root (folders holding ``images/<id>.png``).

    Raises
    ------
    NotADirectoryError
        If ``root`` is not a folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise NotADirectoryError(f"{root}: not a folder")
    with os.scandir(root) as entries:
        dirs = [Path(e.path) for e in entries if e.is_dir()]
    return sorted((d for d in dirs if is_dsb_sample(d)), key=lambda d: d.name)


def mask_paths(mask_dir: str | Path) -> list[Path]:
    """Sorted image files of a folder of per-nucleus masks (hidden files skipped)."""
    mask_dir = Path(mask_dir)
    if not mask_dir.is_dir():
        return []
    suffixes = (".png", ".tif", ".tiff", ".bmp")
    with os.scandir(mask_dir) as entries:
        names = [e.name for e in entries if e.is_file() and not e.name.startswith(".")]
    return [mask_dir / n for n in sorted(names) if n.lower().endswith(suffixes)]


def _mask_indices(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """Flat indices of the non-zero pixels of one mask file of image shape ``shape``.

    For 1-band PNG/BMP masks only the bounding box found by Pillow (in C) is scanned, which makes
    merging thousands of small masks fast.
    """
    height, width = shape
    fmt = _sniff(path)
    if fmt == "tiff":
        mask = _decode(path, max(1, height * width), palette_indices=True)
    else:
        try:
            im = _load_pil(path, fmt, max(1, height * width), expect=shape)
        except ImageReadError as exc:
            raise ImageReadError(path, f"mask {exc.problem} (image shape {shape})") from exc
        if im.mode in ("1", "L", "P"):
            bbox = im.getbbox(alpha_only=False)
            if bbox is None:
                return np.empty(0, np.intp)
            rows, cols = np.nonzero(np.asarray(im.crop(bbox)))
            return (rows + bbox[1]) * width + (cols + bbox[0])
        mask = _pil_to_array(im, palette_indices=True)
    if mask.ndim == 3:
        mask = mask.any(axis=-1)
    if mask.shape != shape:
        raise ImageReadError(path, f"mask shape {mask.shape} differs from the image shape {shape}")
    return np.flatnonzero(mask)


def merge_masks(paths: Sequence[str | Path], shape: tuple[int, int]) -> tuple[np.ndarray, list[str]]:
    """Merge binary per-nucleus mask files into one label image.

    Parameters
    ----------
    paths : sequence of path
        Mask files in the order ids are given (1, 2, ...); any non-zero pixel is foreground.
    shape : (int, int)
        Expected ``(H, W)`` of every mask.

    Returns
    -------
    labels : numpy.ndarray
        ``int32`` labels; overlap pixels stay with the earlier mask; empty masks get no id.
    problems : list of str
        One line per empty mask and per overlapping pair.

    Raises
    ------
    ImageReadError
        A mask that cannot be read or whose shape differs from ``shape``.
    """
    shape = (int(shape[0]), int(shape[1]))
    flat = np.zeros(shape[0] * shape[1], np.int32)
    names: dict[int, str] = {}
    problems: list[str] = []
    next_id = 1
    for p in map(Path, paths):
        idx = _mask_indices(p, shape)
        if idx.size == 0:
            problems.append(f"empty mask {p.parent.name}/{p.name} skipped")
            continue
        taken = flat[idx]
        clash = taken != 0
        if clash.any():
            others, counts = np.unique(taken[clash], return_counts=True)
            for other, count in zip(others.tolist(), counts.tolist(), strict=True):
                problems.append(
                    f"{p.parent.name}/{p.name} overlaps {p.parent.name}/{names[other]} by {count} pixels "
                    "(kept in the first)"
                )
            idx = idx[~clash]
            if idx.size == 0:
                problems.append(f"{p.parent.name}/{p.name} lies entirely inside earlier masks; it gets no pixels")
        flat[idx] = next_id
        names[next_id] = p.name
        next_id += 1
    return flat.reshape(shape), problems


def _check_sample_dir(sample_dir: str | Path) -> Path:
    sample_dir = Path(sample_dir)
    if not is_dsb_sample(sample_dir):
        raise ValueError(f"{sample_dir}: not a DSB sample folder (expected images/{sample_dir.name}.png)")
    return sample_dir


def load_sample(sample_dir: str | Path, check: bool = True) -> Sample:
    """Read a DSB sample's image and merge its masks into one label image.

    Parameters
    ----------
    sample_dir : str or Path
        ``<root>/<id>`` folder.
    check : bool, optional
        Record annotation problems in ``Sample.problems``; with ``False`` the same labels are
        built but the list stays empty.

    Raises
    ------
    ValueError
        If ``sample_dir`` is not a DSB sample folder.
    ImageReadError
        An unreadable image or mask, or a mask whose shape differs from the image.
    """
    sample_dir = _check_sample_dir(sample_dir)
    image_path = sample_image_path(sample_dir)
    image = read_image(image_path)
    labels, problems = merge_masks(mask_paths(sample_dir / "masks"), image.shape[:2])
    return Sample(sample_dir.name, image_path, image, labels, problems if check else [])


def load_labels_only(sample_dir: str | Path) -> np.ndarray:
    """Merged ``int32`` label image of a DSB sample, without decoding its image."""
    sample_dir = _check_sample_dir(sample_dir)
    shape = read_image_shape(sample_image_path(sample_dir))
    labels, _ = merge_masks(mask_paths(sample_dir / "masks"), shape)
    return labels
