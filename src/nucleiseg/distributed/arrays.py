"""Images larger than memory as Dask arrays: open them lazily, write label images block by block.

Inputs may be numpy or Dask arrays, zarr arrays or folders (``.zarr``, OME-Zarr level ``0``),
TIFF files (read tile by tile through ``tifffile``'s zarr interface, so a tiled TIFF is never
loaded whole) or ordinary image files (read whole; they fit in memory by nature).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import tifffile
import zarr
from tqdm import tqdm

from nucleiseg.io.images import ImageReadError, read_image

__all__ = ["TiffRegions", "open_array", "compute", "write_labels_zarr"]

TIFF_SUFFIXES = (".tif", ".tiff")


class TiffRegions:
    """Array-like view of a TIFF file's first series (full resolution) that reads regions on demand.

    Only the path travels to Dask workers; each read opens the file, decodes the tiles or strips
    that overlap the region and closes it again.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        try:
            with tifffile.TiffFile(self.path) as tif:
                series = tif.series[0]
                shape, dtype, axes = tuple(series.shape), np.dtype(series.dtype), series.axes
        except Exception as exc:
            raise ImageReadError(self.path, f"not a readable TIFF ({exc})") from exc
        self._planar = len(shape) == 3 and axes[0] in "CS" and shape[0] in (3, 4)
        if self._planar:
            shape = (shape[1], shape[2], shape[0])
        if len(shape) not in (2, 3) or (len(shape) == 3 and shape[2] not in (1, 3, 4)):
            raise ImageReadError(self.path, f"expected a 2D gray or colour image, got shape {shape} (axes {axes})")
        self.shape: tuple[int, ...] = shape
        self.dtype = dtype
        self.ndim = len(shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        with tifffile.imread(self.path, aszarr=True, series=0, level=0) as store:
            z = zarr.open(store, mode="r")
            if self._planar:
                key = key if isinstance(key, tuple) else (key,)
                key = tuple(key) + (slice(None),) * (3 - len(key))
                return np.moveaxis(np.asarray(z[key[2], key[0], key[1]]), 0, -1)
            return np.asarray(z[key])


def _chunks(shape: tuple[int, ...], block: int) -> tuple[int, ...]:
    return (block, block) + tuple(shape[2:])


def open_array(source: Any, block: int) -> da.Array:
    """A Dask array ``(H, W)`` or ``(H, W, C)`` chunked into ``block x block`` tiles.

    Parameters
    ----------
    source : ndarray, dask array, zarr array, or path
        Paths: a zarr folder (its root array or array ``"0"``), a TIFF file (read lazily), or any
        other image file :func:`nucleiseg.io.read_image` reads.
    block : int
        Block side in pixels.

    Raises
    ------
    ImageReadError
        When the path cannot be read or does not hold a 2D image.
    """
    if isinstance(source, da.Array):
        arr = source
    elif isinstance(source, np.ndarray):
        arr = da.from_array(source, chunks=_chunks(source.shape, block))
    elif isinstance(source, zarr.Array):
        arr = da.from_zarr(source)
    else:
        path = Path(source)
        if not path.exists():
            raise ImageReadError(path, "no such file or folder")
        if path.is_dir():
            try:
                node = zarr.open(str(path), mode="r")
                component = None if isinstance(node, zarr.Array) else "0"
                arr = da.from_zarr(str(path), component=component)
            except Exception as exc:
                raise ImageReadError(path, f"not a zarr image ({exc})") from exc
        elif path.suffix.lower() in TIFF_SUFFIXES:
            reader = TiffRegions(path)
            arr = da.from_array(reader, chunks=_chunks(reader.shape, block), asarray=True, fancy=False)
        else:
            image = read_image(path)
            arr = da.from_array(image, chunks=_chunks(image.shape, block))
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)):
        raise ImageReadError(str(source), f"expected a 2D gray or colour image, got shape {arr.shape}")
    return arr.rechunk(_chunks(arr.shape, block))


def compute(value: Any, client: Any = None) -> Any:
    """Compute a Dask collection on ``client`` (a distributed client) or the local scheduler."""
    if client is not None:
        return client.compute(value, sync=True)
    return dask.compute(value)[0]


def _store_block(path: str, block: np.ndarray, y0: int, x0: int) -> np.ndarray:
    """Write one chunk-aligned block into the zarr array at ``path``; return its nonzero ids."""
    z = zarr.open_array(path, mode="r+")
    z[y0 : y0 + block.shape[0], x0 : x0 + block.shape[1]] = block
    ids = np.unique(block)
    return ids[ids != 0]


def write_labels_zarr(labels: da.Array, path: str | Path, client: Any = None, progress: bool = False) -> int:
    """Write a 2D Dask label array to a zarr folder, block by block, atomically.

    Every block is computed and written by the worker that holds it, so the image is never
    gathered in one process. The folder appears under its final name only once complete (it is
    written beside it under a temporary name and renamed; an existing folder is replaced).

    Parameters
    ----------
    labels : dask array, 2D integer
        Label image; its chunks become the zarr chunks (the last row/column may be smaller).
    path : path
        Target folder, e.g. ``out/big_masks.zarr``.
    client : distributed.Client, optional
        Cluster to compute on (default: Dask's local scheduler).
    progress : bool
        Progress bar over the blocks.

    Returns
    -------
    int
        Number of distinct nonzero labels (nuclei) written.
    """
    if labels.ndim != 2:
        raise ValueError(f"labels must be 2D, got shape {labels.shape}")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        chunks = (labels.chunks[0][0], labels.chunks[1][0])
        # Zarr format 2: readable by zarr 2 and 3, napari and Fiji's N5/Zarr readers.
        fmt = {"zarr_format": 2} if int(zarr.__version__.split(".")[0]) >= 3 else {}
        zarr.open_array(str(tmp), mode="w", shape=labels.shape, chunks=chunks, dtype=labels.dtype, fill_value=0, **fmt)
        offsets = [np.cumsum((0,) + c[:-1]) for c in labels.chunks]
        blocks = labels.to_delayed()
        tasks = [
            dask.delayed(_store_block, pure=False)(str(tmp), blocks[i, j], int(offsets[0][i]), int(offsets[1][j]))
            for i in range(blocks.shape[0]) for j in range(blocks.shape[1])
        ]
        found = _run_blocks(tasks, client, progress)
        ids = np.unique(np.concatenate(found)) if found else np.zeros(0)
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
            os.replace(target, old / target.name)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return int(ids.size)


def _run_blocks(tasks: Iterable[Any], client: Any, progress: bool) -> list[np.ndarray]:
    """Compute delayed block tasks, with a progress bar that follows completion."""
    tasks = list(tasks)
    bar = tqdm(total=len(tasks), desc="blocks", unit="block", disable=not progress)
    with contextlib.closing(bar):
        if client is None:  # one graph, so blocks shared by several tasks are computed once
            results = list(dask.compute(*tasks))
            bar.update(len(tasks))
            return results
        from distributed import as_completed

        futures = client.compute(tasks)
        try:
            results = []
            for future in as_completed(futures):
                results.append(future.result())
                bar.update(1)
        except BaseException:
            client.cancel(futures)
            raise
        return results
