"""Segment one image larger than memory block by block, with seam-free, globally unique labels.

The image is cut into ``block x block`` tiles. Each tile is segmented together with a margin of
``overlap`` pixels on every side (its *extended* region), so nuclei near its border are seen
whole. Stitching then follows three rules:

1. **Ownership.** A tile keeps only the nuclei whose centroid lies in its core (widened by a
   small ``overlap // 4`` tolerance, so a nucleus straddling a border is never dropped by both
   neighbours), and keeps them whole, including the parts that reach into a neighbour's core.
2. **Unique ids.** Tile ``k`` (row-major) numbers its nuclei ``k * cap + 1, k * cap + 2, ...``
   with ``cap`` a power of ten above any possible count (e.g. ``10**7`` for 2048-pixel tiles),
   so ids are unique over the image without any tile knowing the others' counts (ids are not
   consecutive; ``0`` is background).
3. **Merge across borders.** Two tiles can both keep the same nucleus near their common border.
   Every output tile looks at the kept nuclei of its 3x3 neighbourhood, links pairs from
   different tiles that cover the same pixels (overlap >= half of the smaller one), takes the
   connected components of that pair graph (:func:`scipy.sparse.csgraph.connected_components`)
   and keeps one member per component, the largest (ties: the lowest id). Since the rule only
   depends on the two tiles involved, every output tile takes the same decision.

Each output tile depends on 9 segmented tiles, never on the whole image, so Dask streams the
image through the workers. Requirements: ``overlap`` larger than a nucleus and at most half
a block. Intensity normalisation and the nucleus scale are decided once for the whole image
(percentiles of a subsample, diameter estimated once on a central crop), so every tile of a network model
sees the same scale and contrast. The classical model thresholds every tile separately.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np

from nucleiseg.config import InferConfig, PostprocessConfig
from nucleiseg.distributed.arrays import compute, open_array
from nucleiseg.distributed.stitch import Box, assemble
from nucleiseg.bundle import ModelSpec
from nucleiseg.distributed.workers import as_spec, cached_segmenter
from nucleiseg.inference.segmenter import Segmenter
from nucleiseg.inference.size import busiest_centre, view_box
from nucleiseg.postprocess import estimate_diameter
from nucleiseg.transforms.normalize import IntensityRange, intensity_range

__all__ = ["BlockPlan", "plan_blocks", "segment_blocks", "segment_dask"]

Model = ModelSpec | Segmenter | str | Path | Callable[[np.ndarray], np.ndarray]
SAMPLE_PIXELS = 1_000_000  # subsample size for the global intensity percentiles (plenty for 1% / 99.8%)
CROP = 1024  # side of the central crop the nucleus diameter is estimated on
MIN_OVERLAP = 64
INT32_MAX = 2**31 - 1


@dataclass
class BlockPlan:
    """Decisions taken once for the whole image before the tiles are segmented.

    Attributes
    ----------
    model : ModelSpec, Segmenter or callable
        The model the workers load (once per worker), a loaded segmenter (this process only:
        :func:`iter_blocks` or Dask's local scheduler), or a callable ``image -> labels``.
    block, overlap : int
        Tile side and margin in pixels.
    diameter : float or None
        Typical nucleus diameter (given, or estimated on the central crop).
    infer, post : InferConfig, PostprocessConfig, or None
        Settings every tile uses (``infer.diameter`` fixed, so no tile re-estimates the scale).
    intensity : (low, high, invert) or None
        Global normalisation of network inputs; None for the classical model and callables.
    probe_centre : (y, x) or None
        Where the size was estimated when the central crop held no nucleus (None: the centre).
    """

    model: ModelSpec | Segmenter | Callable[[np.ndarray], np.ndarray]
    block: int
    overlap: int
    diameter: float | None
    infer: InferConfig | None
    post: PostprocessConfig | None
    intensity: IntensityRange | None
    probe_centre: tuple[int, int] | None = None

    def describe(self) -> dict[str, Any]:
        """Settings for ``run.json``."""
        return {
            "block": self.block, "overlap": self.overlap,
            "diameter": None if self.diameter is None else round(float(self.diameter), 2),
            "intensity": None if self.intensity is None else [*(round(float(v), 6) for v in self.intensity[:2]), self.intensity[2]],
        }


def _segmenter(model: ModelSpec | Segmenter | str | Path, device: str) -> Segmenter:
    """A loaded segmenter as it is; a spec, name or folder loaded once per process."""
    return model if isinstance(model, Segmenter) else cached_segmenter(model, device)


def _segment_region(
    image: np.ndarray, model: Model, device: str, infer: InferConfig | None, post: PostprocessConfig | None,
    intensity: IntensityRange | None,
) -> tuple[np.ndarray, float | None]:
    """Segment one region on a worker: ``(labels, diameter)``. The model is loaded once per process."""
    if callable(model):
        labels = np.asarray(model(image))
        return labels, (estimate_diameter(labels) if labels.any() else None)
    segmenter = _segmenter(model, device)
    result = segmenter.segment(image, infer, post, keep_probabilities=False, intensity=intensity)
    diameter = result.diameter
    if diameter is None and result.labels.any():
        diameter = estimate_diameter(result.labels)
    return result.labels, diameter


def _estimate_region(
    image: np.ndarray, model: Model, device: str, infer: InferConfig | None, post: PostprocessConfig | None,
    intensity: IntensityRange | None,
) -> float | None:
    """Nucleus diameter of one (central) region, estimated on a worker without segmenting it.

    A network model with a size estimator probes small views of the region
    (:meth:`Segmenter.estimate_size`); other models segment it and measure the objects.
    """
    if callable(model):
        return _segment_region(image, model, device, infer, post, intensity)[1]
    segmenter = _segmenter(model, device)
    if segmenter.is_classical or intensity is None:
        return _segment_region(image, model, device, infer, post, intensity)[1]
    return segmenter.estimate_size(segmenter.normalize(image, intensity), infer, post).diameter


def plan_blocks(
    image: da.Array, model: Model = "default", block: int = 2048, overlap: int | None = None,
    infer: InferConfig | None = None, post: PostprocessConfig | None = None, client: Any = None, device: str = "cpu",
) -> BlockPlan:
    """Fix the scale, the contrast and the overlap for the whole image.

    The diameter is ``infer.diameter`` when given, else estimated once for the whole image on a
    central ``1024 x 1024`` crop (on a worker): by the model's size estimator, which only looks
    at a few downsampled views of it (:mod:`nucleiseg.inference.size`), or, for models without
    one, by segmenting the crop. When a network model finds no nucleus there, the crop around
    the subsample's :func:`~nucleiseg.inference.size.busiest_centre` is tried once more. An
    estimate within the model's rescale tolerance keeps the native scale, as
    :meth:`~nucleiseg.inference.segmenter.Segmenter.segment` does for the whole image. The
    default overlap is ``max(64, 4 * diameter)``.

    Parameters
    ----------
    image : dask.array.Array
        The whole image, ``(H, W)`` or ``(H, W, C)``.
    model, block, overlap, infer, post, client, device
        As in :func:`segment_dask`; a loaded :class:`Segmenter` is also accepted as ``model``.

    Returns
    -------
    BlockPlan
        The decisions every tile follows.

    Raises
    ------
    ValueError
        If the block is too small or the overlap exceeds half a block.
    """
    if block < 2 * MIN_OVERLAP:
        raise ValueError(f"block {block} is too small: use at least {2 * MIN_OVERLAP} pixels")
    reference = model if callable(model) or isinstance(model, Segmenter) else as_spec(model, device)
    segmenter = None
    if not callable(reference):
        segmenter = _segmenter(reference, device)  # config only on this side; tiles load it on the workers
        infer = infer or segmenter.config.infer
        post = post or segmenter.config.postprocess
    sample, step, intensity = _contrast(image, segmenter, client)
    diameter = infer.diameter if infer is not None else None
    centre = None
    if diameter is None:
        estimate = partial(_estimate_at, image, reference, device, infer, post, intensity, client)
        diameter, centre = _probe_diameter(estimate, image.shape[:2], segmenter, sample, step, intensity)
        if infer is not None:
            infer = _tile_scale(infer, diameter, segmenter)
    overlap = _checked_overlap(block, overlap, diameter, infer)
    return BlockPlan(reference, int(block), int(overlap), diameter, infer, post, intensity, centre if diameter else None)


def _contrast(
    image: da.Array, segmenter: Segmenter | None, client: Any,
) -> tuple[np.ndarray | None, int, IntensityRange | None]:
    """``(subsample, step, intensity)``: the global normalisation of a network's inputs, from every ``step``-th pixel.

    The classical model and callables (``segmenter`` None) get no subsample and no intensity range.
    """
    h, w = image.shape[:2]
    step = max(1, math.ceil(math.sqrt(h * w / SAMPLE_PIXELS)))
    if segmenter is None or segmenter.is_classical:
        return None, step, None
    sample = compute(image[::step, ::step], client)
    return sample, step, intensity_range(sample, segmenter.config.normalize)


def _estimate_at(
    image: da.Array, model: Model, device: str, infer: InferConfig | None, post: PostprocessConfig | None,
    intensity: IntensityRange | None, client: Any, centre: tuple[int, int] | None,
) -> float | None:
    """Nucleus diameter of the ``CROP``-pixel view of ``image`` around ``centre`` (None: the centre), on a worker."""
    y0, y1, x0, x1 = view_box(image.shape[:2], 1.0, CROP, 0, centre)
    task = dask.delayed(_estimate_region, pure=True)(image[y0:y1, x0:x1], model, device, infer, post, intensity)
    return compute(task, client)


def _probe_diameter(
    estimate: Callable[[tuple[int, int] | None], float | None], shape: tuple[int, int], segmenter: Segmenter | None,
    sample: np.ndarray | None, step: int, intensity: IntensityRange | None,
) -> tuple[float | None, tuple[int, int] | None]:
    """``(diameter, centre)``: estimated on the central crop, else once more around the subsample's busiest centre.

    ``centre`` is None when the central crop was used.
    """
    diameter = estimate(None)
    if diameter is None and sample is not None and max(shape) > CROP:
        # No nucleus in the central crop (an empty centre): estimate once more where the
        # subsample has the most structure, as the size probe does within an image.
        cy, cx = busiest_centre(segmenter.normalize(sample, intensity), max(1, CROP // step))
        centre = (int(cy * step), int(cx * step))
        return estimate(centre), centre
    return diameter, None


def _tile_scale(infer: InferConfig, diameter: float | None, segmenter: Segmenter | None) -> InferConfig:
    """The settings of every tile: the scale the whole image would get (native: no nucleus, or close enough).

    A callable model (``segmenter`` None) reads no settings: ``infer`` is returned as it is.
    """
    if segmenter is None:
        return infer
    native = not diameter or segmenter.scale_for(diameter, "size_model", infer) == 1.0
    return replace(infer, rescale=False) if native else replace(infer, diameter=diameter)


def _checked_overlap(block: int, overlap: int | None, diameter: float | None, infer: InferConfig | None) -> int:
    """The overlap given, else ``max(64, 4 * diameter)``; a ValueError unless it lies in ``[1, block / 2]``."""
    size = diameter if diameter else (infer.target_diameter if infer is not None else 18.0)
    if overlap is None:
        overlap = max(MIN_OVERLAP, math.ceil(4 * size))
    if overlap < 1 or 2 * overlap > block:
        raise ValueError(
            f"overlap {overlap} px must be between 1 and half the block ({block} px); "
            f"use --block {max(2 * overlap, 2 * MIN_OVERLAP)} or larger"
        )
    return overlap


def _owned_objects(
    region: np.ndarray, ext: Box, core: Box, margin: int, cap: int, model: Model, device: str,
    infer: InferConfig | None, post: PostprocessConfig | None, intensity: IntensityRange | None,
) -> np.ndarray:
    """Segment one extended tile; keep the nuclei whose centroid lies in its (widened) core.

    Returns int32 labels of the extended region numbered ``1..k`` (0 elsewhere).
    """
    labels, _ = _segment_region(region, model, device, infer, post, intensity)
    labels = np.asarray(labels)
    if labels.shape != region.shape[:2] or not np.issubdtype(labels.dtype, np.integer) or (labels.size and labels.min() < 0):
        raise ValueError(f"tile at y={core[0]}, x={core[2]}: segmenter returned invalid labels {labels.dtype} {labels.shape}")
    if labels.size and labels.max() > labels.size:  # sparse ids: compact them first
        labels = np.unique(labels, return_inverse=True)[1].reshape(labels.shape)
    h, w = labels.shape
    flat = labels.ravel().astype(np.intp)
    counts = np.bincount(flat)
    if counts.size <= 1:
        return np.zeros((h, w), np.int32)
    with np.errstate(invalid="ignore", divide="ignore"):
        cy = np.bincount(flat, weights=np.repeat(np.arange(h, dtype=np.float64), w)) / counts + ext[0]
        cx = np.bincount(flat, weights=np.tile(np.arange(w, dtype=np.float64), h)) / counts + ext[2]
    keep = (counts > 0) & (cy >= core[0] - margin) & (cy < core[1] + margin) & (cx >= core[2] - margin) & (cx < core[3] + margin)
    keep[0] = False
    k = int(keep.sum())
    if k > cap:
        raise ValueError(
            f"tile at y={core[0]}, x={core[2]} holds {k} nuclei, more than the {cap} int32 ids each tile has: "
            "the image is too large for int32 labels"
        )
    lut = np.zeros(counts.size, np.int32)
    lut[keep] = np.arange(1, k + 1, dtype=np.int32)
    return lut[labels]


@dataclass(frozen=True)
class _Grid:
    """The tiles of one image: core and extended boxes by ``(row, column)``, and ids per tile."""

    rows: int
    cols: int
    cores: dict[tuple[int, int], Box]
    exts: dict[tuple[int, int], Box]
    cap: int
    margin: int

    def parts(self, i: int, j: int) -> list[tuple[int, int, int]]:
        """``(index, row, column)`` of the tiles around tile ``(i, j)`` (itself included), row-major."""
        return [
            (a * self.cols + b, a, b)
            for a in range(max(0, i - 1), min(self.rows, i + 2)) for b in range(max(0, j - 1), min(self.cols, j + 2))
        ]


def _grid(height: int, width: int, block: int, overlap: int) -> _Grid:
    """Cut ``height x width`` into ``block`` tiles with ``overlap`` margins (see the module notes)."""
    ys = [*range(0, height, block), height]
    xs = [*range(0, width, block), width]
    nby, nbx = len(ys) - 1, len(xs) - 1
    # Ids per tile: a power of ten above any possible count (readable: tile k owns k*cap+1...),
    # or as many as int32 allows for huge images (then _owned_objects checks the actual count).
    most = (block + 2 * overlap) ** 2
    cap = 10 ** math.ceil(math.log10(most + 1))
    if cap * nby * nbx > INT32_MAX:
        cap = INT32_MAX // (nby * nbx)
    cores, exts = {}, {}
    for i in range(nby):
        for j in range(nbx):
            core = (ys[i], ys[i + 1], xs[j], xs[j + 1])
            cores[i, j] = core
            exts[i, j] = (max(0, core[0] - overlap), min(height, core[1] + overlap), max(0, core[2] - overlap), min(width, core[3] + overlap))
    return _Grid(nby, nbx, cores, exts, cap, overlap // 4)


def segment_blocks(image: da.Array, plan: BlockPlan, device: str = "cpu") -> da.Array:
    """Lazy int32 labels of ``image`` (chunked ``plan.block``) following ``plan``; see the module notes."""
    image = image.rechunk((plan.block, plan.block) + tuple(image.shape[2:]))
    grid = _grid(image.shape[0], image.shape[1], plan.block, plan.overlap)
    owned = {}
    for (i, j), ext in grid.exts.items():
        owned[i, j] = dask.delayed(_owned_objects, pure=True)(
            image[ext[0] : ext[1], ext[2] : ext[3]], ext, grid.cores[i, j], grid.margin, grid.cap,
            plan.model, device, plan.infer, plan.post, plan.intensity,
        )
    rows = []
    for i in range(grid.rows):
        row = []
        for j in range(grid.cols):
            core = grid.cores[i, j]
            parts = [(k, grid.exts[a, b], owned[a, b]) for k, a, b in grid.parts(i, j)]
            tile = dask.delayed(assemble, pure=True)(core, parts, grid.cap)
            row.append(da.from_delayed(tile, shape=(core[1] - core[0], core[3] - core[2]), dtype=np.int32))
        rows.append(row)
    return da.block(rows)


def segment_dask(
    array_or_path: Any, model: Model = "default", block: int = 2048, overlap: int | None = None,
    infer: InferConfig | None = None, post: PostprocessConfig | None = None, client: Any = None, device: str = "cpu",
) -> da.Array:
    """Segment an image that may not fit in memory, block-wise on Dask.

    Parameters
    ----------
    array_or_path : ndarray, dask array, zarr array or path
        See :func:`nucleiseg.distributed.arrays.open_array` (zarr folders and tiled TIFFs are
        read lazily, tile by tile).
    model : ModelSpec, str, Path or callable
        A :class:`~nucleiseg.bundle.ModelSpec`, ``"classical"``, a bundled model name or a run
        folder (PyTorch backend; loaded once per worker), or a callable ``image -> int labels``
        (tests, custom segmenters).
    block : int
        Tile side in pixels.
    overlap : int, optional
        Margin segmented around each tile; default ``max(64, 4 * nucleus diameter)``.
    infer, post : optional
        Override the model's settings.
    client : distributed.Client, optional
        Cluster for the planning steps (scale, contrast); the returned array is computed
        wherever it is later computed (e.g. :func:`write_labels_zarr` with the same client).
    device : str
        Device of the models loaded for the planning steps and the tiles.

    Returns
    -------
    dask.array.Array
        Lazy int32 labels ``(H, W)``: 0 background, ids unique over the image, not consecutive.
    """
    image = open_array(array_or_path, block)
    return segment_blocks(image, plan_blocks(image, model, block, overlap, infer, post, client, device), device)
