"""Block-wise segmentation of one in-memory image in this process, without Dask.

:func:`iter_blocks` walks the tiles of :mod:`nucleiseg.distributed.blocks` (same ownership and
merge rules, same functions) row by row and holds at most three rows of tile labels, so the
memory beyond the image is that of one tile plus those rows. :meth:`Segmenter.segment
<nucleiseg.inference.segmenter.Segmenter.segment>` takes this path for images above
``InferConfig.block_pixels`` (:func:`segment_in_blocks`), and ``nucleiseg segment`` streams
such an image's labels straight into a tiled ``_masks.tif`` (:func:`write_block_labels`)
without ever holding them whole.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import dask.array as da
import numpy as np

from nucleiseg.config import InferConfig, PostprocessConfig
from nucleiseg.distributed.blocks import (
    BlockPlan,
    Box,
    _grid,
    _owned_objects,
    plan_blocks,
)
from nucleiseg.distributed.stitch import assemble
from nucleiseg.heap import map_large_blocks, trim_heap
from nucleiseg.inference.segmenter import Segmenter

__all__ = ["BLOCK_TILE", "Renumber", "block_plan", "iter_blocks", "segment_in_blocks", "write_block_labels"]

#: Network tile side within a block: one 512 x 512 tile at a time keeps the network's working
#: memory near 110 MB (a batch of four 1024-pixel tiles needs about 900 MB).
BLOCK_TILE = 512


def block_plan(segmenter: Segmenter, image: np.ndarray, infer: InferConfig, post: PostprocessConfig) -> BlockPlan:
    """Plan ``image`` (in memory) for :func:`iter_blocks` with ``segmenter`` and ``infer.block`` tiles.

    Scale and contrast are fixed once for the whole image (:func:`plan_blocks`); within a
    block the network sees one tile of at most :data:`BLOCK_TILE` pixels at a time.
    """
    tiles = replace(infer, tile=min(infer.tile, BLOCK_TILE), batch_size=1)
    array = da.from_array(image, chunks=(infer.block, infer.block) + image.shape[2:])
    return plan_blocks(array, segmenter, infer.block, None, tiles, post)


def _compact(labels: np.ndarray) -> np.ndarray:
    """Owned labels in the smallest unsigned type that holds them (they wait for their neighbours)."""
    return labels.astype(np.uint16) if labels.size and int(labels.max()) <= 65535 else labels


def iter_blocks(image: np.ndarray, plan: BlockPlan, device: str = "cpu") -> Iterator[tuple[Box, np.ndarray]]:
    """Segment an in-memory image tile by tile, yielding ``(core box, int32 labels)`` row-major.

    The tiles, ownership and merge of :func:`~nucleiseg.distributed.blocks.segment_blocks`,
    run serially: the owned nuclei of at most three rows of tiles are held at a time, and
    arrays of 256 KB or more are mapped one by one (:func:`~nucleiseg.heap.map_large_blocks`),
    so freed tile memory is not kept. Ids are unique over the image but not consecutive (see
    :class:`Renumber`).
    """
    map_large_blocks()  # each tile's arrays go back to the OS when freed, not into a growing heap
    grid = _grid(image.shape[0], image.shape[1], plan.block, plan.overlap)
    owned: dict[tuple[int, int], np.ndarray] = {}

    def own(i: int, j: int) -> np.ndarray:
        if (i, j) not in owned:
            ext = grid.exts[i, j]
            owned[i, j] = _compact(_owned_objects(
                image[ext[0] : ext[1], ext[2] : ext[3]], ext, grid.cores[i, j], grid.margin, grid.cap,
                plan.model, device, plan.infer, plan.post, plan.intensity,
            ))
        return owned[i, j]

    for i in range(grid.rows):
        for key in [k for k in owned if k[0] < i - 1]:  # rows no later tile looks at
            del owned[key]
        trim_heap()
        for j in range(grid.cols):
            parts = [(k, grid.exts[a, b], own(a, b)) for k, a, b in grid.parts(i, j)]
            yield grid.cores[i, j], assemble(grid.cores[i, j], parts, grid.cap)


class Renumber:
    """Map the sparse ids of :func:`iter_blocks` to ``1..n``, tile by tile in the order fed.

    A nucleus spanning several tiles keeps the number it got in the first. Memory: two arrays
    as long as the number of nuclei.
    """

    def __init__(self) -> None:
        self._ids = np.zeros(0, np.int64)  # sparse ids seen so far, sorted
        self._numbers = np.zeros(0, np.int64)  # their numbers

    @property
    def count(self) -> int:
        """Nuclei numbered so far."""
        return int(self._ids.size)

    def __call__(self, tile: np.ndarray) -> np.ndarray:
        """``tile`` with its ids renumbered (0 stays 0), as int64."""
        ids, inverse = np.unique(tile, return_inverse=True)
        ids = ids.astype(np.int64)
        seen = np.zeros(ids.size, bool)
        if self._ids.size:
            seen = self._ids[np.minimum(np.searchsorted(self._ids, ids), self._ids.size - 1)] == ids
        new = ids[~seen & (ids != 0)]
        if new.size:
            numbers = np.arange(self.count + 1, self.count + 1 + new.size, dtype=np.int64)
            keys = np.concatenate([self._ids, new])
            order = np.argsort(keys, kind="stable")
            self._ids, self._numbers = keys[order], np.concatenate([self._numbers, numbers])[order]
        lut = np.zeros(ids.size, np.int64)
        lut[ids != 0] = self._numbers[np.searchsorted(self._ids, ids[ids != 0])]
        return lut[inverse].reshape(tile.shape)


def segment_in_blocks(segmenter: Segmenter, image: np.ndarray, infer: InferConfig, post: PostprocessConfig) -> tuple[np.ndarray, BlockPlan]:
    """int32 labels ``1..n`` of ``image`` segmented block-wise in this process, and the plan used."""
    plan = block_plan(segmenter, image, infer, post)
    labels = np.zeros(image.shape[:2], np.int32)
    renumber = Renumber()
    for (y0, y1, x0, x1), tile in iter_blocks(image, plan):
        labels[y0:y1, x0:x1] = renumber(tile)
    return labels, plan


def write_block_labels(path: str | Path, image: np.ndarray, plan: BlockPlan, pixel_size: float | None = None) -> int:
    """Segment ``image`` block-wise into a tiled, zlib-compressed uint32 TIFF; the number of nuclei.

    Tiles are written as they are assembled, so the labels are never held whole. The file
    appears atomically; ``plan.block`` must be a multiple of 16 (a TIFF tile rule). ``pixel_size``
    (µm per pixel) goes into the resolution tags, as :func:`nucleiseg.io.images.write_labels` does.
    """
    import tifffile

    from nucleiseg.io.atomic import atomic_path
    from nucleiseg.io.units import resolution_tags

    block = plan.block
    if block % 16:
        raise ValueError(f"block {block} must be a multiple of 16 to be written as TIFF tiles")
    renumber = Renumber()

    def tiles() -> Iterator[np.ndarray]:
        for (y0, y1, x0, x1), tile in iter_blocks(image, plan):
            out = np.zeros((block, block), np.uint32)
            out[: y1 - y0, : x1 - x0] = renumber(tile)
            yield out

    with atomic_path(Path(path)) as tmp:
        tifffile.imwrite(tmp, tiles(), shape=image.shape[:2], dtype=np.uint32, tile=(block, block),
                         compression="zlib", photometric="minisblack", **resolution_tags(pixel_size))
    return renumber.count
