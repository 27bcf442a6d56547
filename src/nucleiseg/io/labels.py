"""Finding input images and their ground truth in the common folder layouts.

Supported layouts:

* single image files, and folders searched recursively for ``.png .tif .tiff .jpg .jpeg .bmp``;
* DSB 2018 roots and sample folders (``<id>/images/<id>.png`` + ``<id>/masks/*.png``);
* Cellpose pairs: ``x.tif`` with ``x_masks.tif`` (or ``x_masks.png``, ``x_mask.*``) beside it;
* ``images/`` + ``masks/`` (or ``labels/``) folders: ``masks/<stem>.<ext>`` is a label or binary
  image, ``masks/<stem>/`` a folder of binary masks, one per nucleus.

Files named ``*_masks.*`` or ``*_mask.*`` and the contents of ``masks/`` folders are ground truth,
never inputs. Ground truth given as a binary image is split into connected components.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from skimage.measure import label as connected_components

from nucleiseg.io import dsb
from nucleiseg.io.images import IMAGE_SUFFIXES, read_image_shape, read_labels
from nucleiseg.io.rle import read_rle_csv

__all__ = ["InputItem", "discover_inputs", "load_ground_truth", "load_item_gt"]

_MASK_TAGS = ("_masks", "_mask")
_OUTPUT_TAGS = ("_overlay", "_diff")
_MASK_DIRS = ("masks", "labels")


@dataclass(frozen=True)
class InputItem:
    """One image to process and, when found, its ground truth.

    Attributes
    ----------
    id : str
        Unique id (file stem or DSB sample id; relative path when stems collide).
    image_path : Path
        The image file.
    gt_path : Path or None
        DSB sample folder (``gt_kind="dsb"``), label image (``"label"``) or folder of binary
        masks (``"maskdir"``).
    gt_kind : {"dsb", "label", "maskdir"} or None
    """

    id: str
    image_path: Path
    gt_path: Path | None = None
    gt_kind: str | None = None


def _is_image(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_SUFFIXES)


def _is_mask_name(name: str) -> bool:
    return Path(name).stem.lower().endswith(_MASK_TAGS)


def _is_output_name(name: str) -> bool:
    """Overlays written by ``nucleiseg segment`` are never inputs when a folder is re-scanned."""
    return Path(name).stem.lower().endswith(_OUTPUT_TAGS)


def _strip_mask_tag(stem: str) -> str:
    for tag in _MASK_TAGS:
        if stem.lower().endswith(tag):
            return stem[: -len(tag)]
    return stem


def _find_gt(image: Path) -> tuple[Path | None, str | None]:
    """Locate ground truth for an image file following the supported layouts."""
    folder, stem = image.parent, image.stem
    if folder.name == "images" and folder.parent.name == stem and dsb.is_dsb_sample(folder.parent):
        if (folder.parent / "masks").is_dir():
            return folder.parent, "dsb"
    for tag in _MASK_TAGS:
        for ext in IMAGE_SUFFIXES:
            candidate = folder / f"{stem}{tag}{ext}"
            if candidate.is_file():
                return candidate, "label"
    if folder.name == "images":
        for mask_dir in (folder.parent / d for d in _MASK_DIRS):
            if (mask_dir / stem).is_dir():
                return mask_dir / stem, "maskdir"
            for name in (stem, f"{stem}_masks", f"{stem}_mask"):
                for ext in IMAGE_SUFFIXES:
                    if (mask_dir / f"{name}{ext}").is_file():
                        return mask_dir / f"{name}{ext}", "label"
    return None, None


def _walk_images(root: Path) -> list[tuple[Path, Path]]:
    """``(image file, path it is named by)`` pairs under ``root``, recursively, sorted."""
    found: list[tuple[Path, Path]] = []
    visited: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        here = Path(dirpath)
        real = os.path.realpath(dirpath)
        if real in visited:  # a symlink cycle or a folder linked twice
            dirnames[:] = []
            continue
        visited.add(real)
        if here != root and dsb.is_dsb_sample(here):
            found.append((dsb.sample_image_path(here), here))
            dirnames[:] = []
            continue
        if "images" in dirnames:  # images/ + masks/ layout: masks are ground truth, not inputs
            dirnames[:] = [d for d in dirnames if d not in _MASK_DIRS]
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if _is_image(name) and not _is_mask_name(name) and not _is_output_name(name):
                found.append((here / name, here / name))
    return found


def _items_for(path: Path) -> list[tuple[InputItem, str]]:
    """Items found from one user-given path, each with its path relative to that input."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if path.is_file():
        if not _is_image(path.name):
            raise ValueError(f"{path}: not an image file (expected one of {', '.join(IMAGE_SUFFIXES)})")
        gt, kind = _find_gt(path)
        return [(InputItem(path.stem, path, gt, kind), path.stem)]
    if dsb.is_dsb_sample(path):
        sample = [(dsb.sample_image_path(path), path)]
    else:
        sample = _walk_images(path)
    out = []
    for image, named_by in sample:
        gt, kind = _find_gt(image)
        rel = named_by.relative_to(path).as_posix() if named_by != path else named_by.name
        rel = rel[: -len(named_by.suffix)] if named_by.is_file() else rel
        stem = named_by.name if named_by.is_dir() else image.stem
        out.append((InputItem(stem, image, gt, kind), rel))
    return sorted(out, key=lambda pair: pair[1])


def discover_inputs(paths: Iterable[str | Path] | str | Path) -> list[InputItem]:
    """Find every input image (and its ground truth) under the given files and folders.

    Parameters
    ----------
    paths : path or iterable of paths
        Image files, plain folders (searched recursively), DSB roots or DSB sample folders.

    Returns
    -------
    list of InputItem
        Inputs in argument order, each argument's items sorted by relative path; the same file
        listed twice appears once. Ids are file stems (DSB sample ids); when stems collide the
        path relative to the given folder (without suffix, ``/``-separated) is used instead.

    Raises
    ------
    FileNotFoundError
        A path that does not exist.
    ValueError
        A file that is not an image, or no images found at all.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    found: list[tuple[InputItem, str]] = []
    seen: set[Path] = set()
    for p in map(Path, paths):
        for item, rel in _items_for(p):
            key = item.image_path.resolve()
            if key not in seen:
                seen.add(key)
                found.append((item, rel))
    if not found:
        raise ValueError("no input images found")
    ids = [item.id for item, _ in found]
    for fallback in (
        [rel for _, rel in found],
        [f"{rel}{item.image_path.suffix}" for item, rel in found],
        [item.image_path.resolve().as_posix().lstrip("/") for item, _ in found],
    ):
        counts = Counter(ids)
        ids = [alt if counts[cur] > 1 else cur for cur, alt in zip(ids, fallback, strict=True)]
    return [
        InputItem(new_id, item.image_path, item.gt_path, item.gt_kind)
        for new_id, (item, _) in zip(ids, found, strict=True)
    ]


def _load_label_file(path: Path) -> np.ndarray:
    """Read a label image; a binary (0/1) image is split into connected components."""
    labels = read_labels(path)
    if labels.size and labels.max() == 1:
        labels = connected_components(labels, connectivity=1).astype(np.int32)
    return labels


def _load_mask_dir(folder: Path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Merge a folder of binary masks (one nucleus each) into a label image."""
    paths = dsb.mask_paths(folder)
    if shape is None:
        if not paths:
            raise ValueError(f"{folder}: no mask images and no image to take the shape from")
        shape = read_image_shape(paths[0])
    labels, _ = dsb.merge_masks(paths, shape)
    return labels


def load_item_gt(item: InputItem) -> np.ndarray | None:
    """Ground-truth labels of an :class:`InputItem`, or ``None`` when it has none."""
    if item.gt_kind is None or item.gt_path is None:
        return None
    if item.gt_kind == "dsb":
        return dsb.load_labels_only(item.gt_path)
    if item.gt_kind == "label":
        return _load_label_file(item.gt_path)
    if item.gt_kind == "maskdir":
        return _load_mask_dir(item.gt_path, read_image_shape(item.image_path))
    raise ValueError(f"{item.id}: unknown ground-truth kind {item.gt_kind!r}")


def load_ground_truth(
    path: str | Path, shapes: dict[str, tuple[int, int]] | None = None
) -> dict[str, np.ndarray]:
    """Load ground-truth labels keyed by image id.

    Parameters
    ----------
    path : str or Path
        A DSB root or sample folder; a folder of label images (``<id>_masks.tif``, ``<id>.png``,
        ...; the id is the name without ``_masks``/``_mask``) and/or of ``<id>/`` folders of
        binary masks; a folder with ``masks/`` (or ``labels/``) inside; a single label image;
        or a Kaggle RLE CSV (shapes from its ``Height``/``Width`` columns or ``shapes``).
    shapes : dict, optional
        ``{id: (H, W)}`` for RLE CSVs without ``Height``/``Width`` columns.

    Raises
    ------
    FileNotFoundError
        A path that does not exist.
    ValueError
        Nothing recognisable as ground truth, duplicate ids, or an RLE CSV without shapes.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if path.is_file():
        if path.suffix.lower() == ".csv":
            return read_rle_csv(path, shapes=shapes)
        return {_strip_mask_tag(path.stem): _load_label_file(path)}
    if dsb.is_dsb_sample(path):
        return {path.name: dsb.load_labels_only(path)}
    if dsb.is_dsb_root(path):
        return {d.name: dsb.load_labels_only(d) for d in dsb.list_samples(path)}
    for sub in _MASK_DIRS:
        if (path / sub).is_dir():
            return load_ground_truth(path / sub)
    entries = sorted(path.iterdir())
    files = [e for e in entries if e.is_file() and _is_image(e.name)]
    if any(_is_mask_name(f.name) for f in files):  # Cellpose folder: x.tif beside x_masks.tif
        files = [f for f in files if _is_mask_name(f.name)]
    dirs = [e for e in entries if e.is_dir() and not e.name.startswith(".") and dsb.mask_paths(e)]
    out: dict[str, np.ndarray] = {}
    for entry in sorted(files + dirs):
        if entry.is_dir():
            key, value = entry.name, _load_mask_dir(entry)
        else:
            key, value = _strip_mask_tag(entry.stem), _load_label_file(entry)
        if key in out:
            raise ValueError(f"{path}: two ground-truth entries for id {key!r}")
        out[key] = value
    if not out:
        raise ValueError(f"{path}: no label images, mask folders or DSB samples found")
    return out
