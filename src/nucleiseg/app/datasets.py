"""The datasets the web app knows: server folders (``nucleiseg serve --data DIR``) and uploaded ZIPs.

Each dataset is a folder in any layout ``nucleiseg evaluate`` and ``nucleiseg inspect`` read (DSB
2018, Cellpose pairs, ``images/`` + ``masks/``). Its summary is the one ``nucleiseg inspect``
prints (:func:`nucleiseg.io.survey.survey`), computed once on first request and cached with a few
sample thumbnails (image with the ground-truth outlines). Training needs the DSB layout;
:func:`stage_for_training` writes any other layout into it.
"""

from __future__ import annotations

import re
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nucleiseg.app.limits import api_error, safe_name
from nucleiseg.app.uploads import ZipLimits, extract_dataset_zip

__all__ = ["Dataset", "DatasetRegistry", "stage_for_training", "thumbnail"]

THUMB_SIDE = 112
_MAX_THUMBS = 6


@dataclass
class Dataset:
    """One dataset folder and its cached ``inspect`` summary."""

    name: str
    path: Path
    source: str  # "server" or "upload"
    summary: dict[str, Any] | None = None
    thumbs: list[bytes] = field(default_factory=list)
    error: str | None = None

    def describe(self) -> dict[str, Any]:
        """JSON-ready listing entry (no server paths)."""
        return {
            "name": self.name, "source": self.source, "summary": self.summary, "error": self.error,
            "thumbnails": [f"/api/datasets/{self.name}/thumbs/{k}.png" for k in range(len(self.thumbs))],
        }


def thumbnail(image: np.ndarray, labels: np.ndarray | None = None, side: int = THUMB_SIDE) -> bytes:
    """A PNG of at most ``side`` pixels a side: the image as 8-bit RGB, ground-truth outlines on it."""
    from PIL import Image

    from nucleiseg.app.render import png_bytes
    from nucleiseg.io.images import to_uint8_rgb
    from nucleiseg.io.outputs import overlay_outlines

    rgb = to_uint8_rgb(image)
    if labels is not None and labels.any():
        rgb = overlay_outlines(rgb, labels)
    pil = Image.fromarray(rgb)
    pil.thumbnail((side, side), Image.Resampling.BILINEAR)
    return png_bytes(np.asarray(pil))


class DatasetRegistry:
    """Named dataset folders; uploads land in ``upload_root`` (kept across restarts).

    Parameters
    ----------
    folders : list of Path
        Server-side dataset folders; each is named after its folder (``-2``... on a clash).
    upload_root : Path, optional
        Where uploaded ZIPs are unpacked; None refuses uploads.
    zip_limits : ZipLimits
    max_pixels : int
    """

    def __init__(self, folders: list[Path], upload_root: Path | None, zip_limits: ZipLimits, max_pixels: int) -> None:
        self._items: dict[str, Dataset] = {}
        self._lock = threading.Lock()
        self._summary_locks: dict[str, threading.Lock] = {}
        self.upload_root = upload_root
        self.zip_limits = zip_limits
        self.max_pixels = max_pixels
        for folder in folders:
            folder = Path(folder)
            if not folder.is_dir():
                raise FileNotFoundError(f"{folder}: dataset folder not found")
            self._add(Dataset(self._unique(safe_name(folder.name + ".x", "dataset")), folder.resolve(), "server"))
        if upload_root is not None:
            upload_root.mkdir(parents=True, exist_ok=True)
            for folder in sorted(p for p in upload_root.iterdir() if p.is_dir() and not p.name.startswith(".")):
                self._add(Dataset(self._unique(folder.name), folder, "upload"))

    def _unique(self, name: str) -> str:
        base, k = name, 2
        while name in self._items:
            name, k = f"{base}-{k}", k + 1
        return name

    def _add(self, dataset: Dataset) -> Dataset:
        with self._lock:
            self._items[dataset.name] = dataset
            self._summary_locks[dataset.name] = threading.Lock()
        return dataset

    def names(self) -> list[str]:
        """Dataset names in listing order."""
        return list(self._items)

    def get(self, name: str) -> Dataset:
        """The dataset called ``name``, or 404."""
        dataset = self._items.get(name)
        if dataset is None:
            raise api_error(404, f"no dataset named '{name}'; GET /api/datasets lists them")
        return dataset

    def summarise(self, name: str) -> Dataset:
        """Compute (once) the ``nucleiseg inspect`` summary and thumbnails of a dataset (blocking)."""
        from nucleiseg.io.survey import survey

        dataset = self.get(name)
        with self._summary_locks[name]:
            if dataset.summary is None and dataset.error is None:
                try:
                    table, summary, grid = survey(dataset.path, progress=False, max_grid=_MAX_THUMBS)
                except (OSError, ValueError) as exc:
                    dataset.error = f"cannot read this dataset: {type(exc).__name__}"
                    return dataset
                summary["images_with_masks"] = int(table["nuclei"].notna().sum()) if len(table) else 0
                dataset.thumbs = [thumbnail(image, labels) for _, image, labels in grid]
                dataset.summary = summary
        return dataset

    def add_upload(self, data: bytes, filename: str | None) -> Dataset:
        """Unpack an uploaded ZIP as a new dataset (see :mod:`nucleiseg.app.uploads`)."""
        if self.upload_root is None:
            raise api_error(403, "this server accepts no dataset uploads")
        stem = re.sub(r"[^A-Za-z0-9_-]+", "-", safe_name(filename, "upload"))[:40].strip("-") or "upload"
        name = self._unique(stem)
        while (self.upload_root / name).exists():
            name = self._unique(name + "-x")
        path = extract_dataset_zip(data, safe_name(filename, "upload"), self.upload_root / name, self.zip_limits, self.max_pixels)
        from nucleiseg.io.labels import discover_inputs

        try:
            found = discover_inputs([path])
        except ValueError:
            found = []
        if not found:
            shutil.rmtree(path, ignore_errors=True)
            raise api_error(422, f"ZIP '{safe_name(filename, 'upload')}' holds no input images (only masks?)")
        return self._add(Dataset(name, path, "upload"))


def stage_for_training(source: Path, dest: Path) -> tuple[Path, int]:
    """The DSB-layout folder to train on: ``source`` itself, or a DSB copy written to ``dest``.

    Images with ground truth are written as ``<id>/images/<id>.png`` with one binary PNG per
    nucleus in ``<id>/masks/``; images without ground truth are skipped.

    Returns
    -------
    (Path, int)
        The training folder and its number of annotated images.

    Raises
    ------
    ValueError
        Fewer than two annotated images (one is needed for validation, one for training).
    """
    from PIL import Image

    from nucleiseg.io.dsb import is_dsb_root, list_samples
    from nucleiseg.io.images import read_image, to_uint8_rgb
    from nucleiseg.io.labels import discover_inputs, load_item_gt

    if is_dsb_root(source):
        n = sum(1 for d in list_samples(source) if (d / "masks").is_dir())
        _check_count(n)
        return source, n
    items = [i for i in discover_inputs([source]) if i.gt_path is not None]
    _check_count(len(items))
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for k, item in enumerate(items):
            sample_id = f"{k:04d}_{re.sub(r'[^A-Za-z0-9_-]+', '_', item.id)[:60]}"
            image, labels = read_image(item.image_path), load_item_gt(item)
            if image.dtype != np.uint8 and not (image.dtype == np.uint16 and image.ndim == 2):
                image = to_uint8_rgb(image)
            (tmp / sample_id / "images").mkdir(parents=True)
            (tmp / sample_id / "masks").mkdir()
            Image.fromarray(image).save(tmp / sample_id / "images" / f"{sample_id}.png")
            for j in np.unique(labels[labels > 0]):
                Image.fromarray((labels == j).astype(np.uint8) * 255).save(tmp / sample_id / "masks" / f"{int(j):05d}.png")
        shutil.rmtree(dest, ignore_errors=True)
        tmp.rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest, len(items)


def _check_count(n: int) -> None:
    if n < 2:
        raise ValueError(
            f"the dataset has {n} image(s) with ground-truth masks; training needs at least 2 "
            "(a mask file or mask folder beside each image: check it with `nucleiseg inspect`)"
        )
