"""Sliding-window prediction of images of any size with any batch predictor.

The predictor is a plain callable ``(B, C, h, w) float32 -> (B, K, h, w)`` probabilities, so a
torch model, an ONNX session and a test-time-augmented wrapper all share this code. Tiles
overlap and are blended with a window (Gaussian by default, like MONAI's
``sliding_window_inference``); memory stays bounded by ``batch_size`` tiles plus the ``(K, H, W)``
output (the separable weights are summed per axis, not in an ``(H, W)`` map).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

__all__ = ["Predictor", "axis_windows", "blend_window", "predict_tiled"]

Predictor = Callable[[np.ndarray], np.ndarray]

BLENDS = ("gaussian", "linear", "constant")
# Smallest blending weight relative to the window's maximum: tile borders never weigh zero.
WEIGHT_FLOOR = 1e-3
# Most pixels per predictor call: a batch of tiles costs the network's working memory (about
# 320 MB per megapixel for the bundled int8 U-Net under ONNX Runtime) and runs no faster on a
# CPU than one tile after another (four 512-pixel tiles: 1.8 s per megapixel, one: 1.5 s), so
# tiles of more than 512 x 512 pixels go one at a time and only small ones are batched.
BATCH_PIXELS = 512 * 512
# Longest window side once an image is split (a side longer than ``tile``, or more than
# SPLIT_PIXELS pixels). 640-pixel windows run about 25 % faster per pixel than 864-1024-pixel
# ones on a CPU (the network's activations fit the caches better) and need about 130 MB of
# working memory instead of 240-330 MB. One window of a small image wastes nothing on overlaps,
# so images of up to SPLIT_PIXELS stay whole: split, a 1000 x 1000 image took 0.87x the CPU
# time of one 1024-pixel window, 900 x 900 1.05x and 800 x 800 1.25x.
SPLIT_TILE = 640
SPLIT_PIXELS = 960 * 960


def _round_up(n: int, multiple: int) -> int:
    """Smallest multiple of ``multiple`` that is >= ``max(n, 1)``."""
    return max(multiple, -(-n // multiple) * multiple)


def axis_windows(size: int, tile: int, step: int, stride: int = 1) -> tuple[int, list[int]]:
    """Window length and start offsets covering ``0..size`` with as few, as small windows as possible.

    An axis of at most ``tile`` pixels is one window of ``size``. A longer one gets the fewest
    windows ``n`` that overlap by at least ``tile - step`` pixels, each of the same length (the
    smallest multiple of ``stride`` that allows that overlap, never more than ``tile``), spread
    evenly from 0 to ``size - length``. Sizing the windows to the axis, rather than using
    ``tile``-long ones every ``step`` pixels with the last one pushed back to the border, avoids
    a nearly redundant last column: a 2048-pixel axis with tiles of 1024 and step 768 gets three
    windows of 864 pixels instead of three of 1024.

    Parameters
    ----------
    size : int
        Length of the axis.
    tile : int
        Longest window (a multiple of ``stride``).
    step : int
        ``tile`` minus the least overlap between neighbouring windows.
    stride : int
        Window lengths are multiples of it (axes longer than ``tile`` only).

    Returns
    -------
    length : int
        Window length.
    starts : list of int
        Start offsets, the first 0 and the last ``size - length``.
    """
    if size <= tile:
        return size, [0]
    overlap = tile - step
    n = -(-(size - overlap) // step)
    length = min(tile, _round_up(-(-(size + (n - 1) * overlap) // n), stride))
    return length, [round(i * (size - length) / (n - 1)) for i in range(n)]


def _window_1d(n: int, blend: str, ramp: int) -> np.ndarray:
    """One axis of the blending window, maximum 1, minimum ``WEIGHT_FLOOR``."""
    if blend == "constant" or n == 1:
        return np.ones(n, np.float64)
    pos = np.arange(n, dtype=np.float64)
    if blend == "gaussian":
        sigma = n / 8.0
        w = np.exp(-0.5 * ((pos - (n - 1) / 2.0) / sigma) ** 2)
    else:
        edge = np.minimum(pos, n - 1 - pos) + 1.0
        w = np.minimum(edge / max(1, ramp), 1.0)
    return np.maximum(w / w.max(), WEIGHT_FLOOR)


def blend_window(shape: tuple[int, int], blend: str = "gaussian", ramp: int = 1) -> np.ndarray:
    """Separable float32 blending weights of ``shape``.

    Parameters
    ----------
    shape : tuple of int
        ``(h, w)`` of the tile.
    blend : {"gaussian", "linear", "constant"}
        Gaussian (sigma = side / 8), linear taper over ``ramp`` pixels from each border, or flat.
    ramp : int
        Taper length for ``blend="linear"`` (usually the overlap in pixels).
    """
    if blend not in BLENDS:
        raise ValueError(f"blend must be one of {', '.join(BLENDS)}, got {blend!r}")
    wy = _window_1d(shape[0], blend, ramp)
    wx = _window_1d(shape[1], blend, ramp)
    return np.outer(wy, wx).astype(np.float32)


def _pad_tile(tile: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Pad a ``(C, h, w)`` tile at the bottom/right to ``shape``: reflect, or zeros on 1-pixel axes."""
    pad_y, pad_x = shape[0] - tile.shape[1], shape[1] - tile.shape[2]
    if pad_y == 0 and pad_x == 0:
        return tile
    if pad_y and tile.shape[1] > 1:
        tile = np.pad(tile, ((0, 0), (0, pad_y), (0, 0)), mode="reflect")
    elif pad_y:
        tile = np.pad(tile, ((0, 0), (0, pad_y), (0, 0)), mode="constant")
    if pad_x and tile.shape[2] > 1:
        tile = np.pad(tile, ((0, 0), (0, 0), (0, pad_x)), mode="reflect")
    elif pad_x:
        tile = np.pad(tile, ((0, 0), (0, 0), (0, pad_x)), mode="constant")
    return tile


def _predict(predictor: Predictor, batch: np.ndarray) -> np.ndarray:
    """``predictor(batch)``, checked to be ``(B, K, h, w)`` for a ``(B, C, h, w)`` batch."""
    pred = np.asarray(predictor(batch))
    if pred.ndim != 4 or pred.shape[0] != batch.shape[0] or pred.shape[2:] != batch.shape[2:]:
        raise ValueError(f"predictor returned shape {pred.shape} for a batch of shape {batch.shape}")
    return pred


def _windows(height: int, width: int, tile: int, step: int, stride: int) -> Iterator[tuple[int, int, int, int]]:
    """``(y0, x0, h, w)`` of every window, row by row (see :func:`axis_windows`)."""
    th, ys = axis_windows(height, tile, step, stride)
    tw, xs = axis_windows(width, tile, step, stride)
    for y0 in ys:
        for x0 in xs:
            yield y0, x0, th, tw


def predict_tiled(
    predictor: Predictor,
    image_chw: np.ndarray,
    tile: int = 512,
    overlap: float = 0.25,
    batch_size: int = 4,
    stride: int = 32,
    blend: str = "gaussian",
) -> np.ndarray:
    """Predict a ``(C, H, W)`` image of any size by overlapping, blended tiles.

    Axes no longer than ``tile`` are covered by one window padded up to a multiple of
    ``stride``; longer axes get the fewest equal windows of at most ``tile`` pixels (rounded
    down to a multiple of ``stride``) that overlap by at least ``overlap * tile`` pixels, spread
    evenly (:func:`axis_windows`). An image with a side longer than ``tile`` or more than
    :data:`SPLIT_PIXELS` pixels is split with ``tile`` at most :data:`SPLIT_TILE` (faster per
    pixel on a CPU, a fraction of the memory). Every tile handed to ``predictor`` therefore has both sides
    divisible by ``stride``.

    Parameters
    ----------
    predictor : callable
        ``(B, C, h, w) float32 -> (B, K, h, w)`` probabilities.
    image_chw : np.ndarray
        ``(C, H, W)`` image (already normalised).
    tile : int
        Tile side in pixels (at most :data:`SPLIT_TILE` once the image needs several tiles).
    overlap : float
        Fraction of a tile shared with its neighbour, in ``[0, 1)``.
    batch_size : int
        Maximum number of tiles per predictor call (fewer when they would exceed
        :data:`BATCH_PIXELS` pixels together).
    stride : int
        The model's total downsampling factor; tile sides are multiples of it.
    blend : {"gaussian", "linear", "constant"}
        Blending window for overlapping tiles.

    Returns
    -------
    np.ndarray
        float32 ``(K, H, W)`` blended probabilities.
    """
    image = _checked_image(image_chw, tile, overlap, batch_size, stride, blend)
    _, height, width = image.shape
    tile, step = _tile_and_step(height, width, tile, overlap, stride)
    windows = list(_windows(height, width, tile, step, stride))
    th, tw = windows[0][2], windows[0][3]
    padded = (_round_up(th, stride), _round_up(tw, stride))
    batch_size = max(1, min(batch_size, BATCH_PIXELS // (padded[0] * padded[1])))
    if len(windows) == 1:  # one window: its weights are all 1, so blending would only copy the output twice
        pred = _predict(predictor, _pad_tile(image, padded)[None])
        return np.ascontiguousarray(pred[0, :, :height, :width], dtype=np.float32)
    return _blend_windows(predictor, image, windows, padded, batch_size, blend, tile - step)


def _checked_image(image_chw: np.ndarray, tile: int, overlap: float, batch_size: int, stride: int, blend: str) -> np.ndarray:
    """The ``(C, H, W)`` image as float32, after checking it and the settings of :func:`predict_tiled`."""
    image = np.asarray(image_chw)
    if image.ndim != 3 or min(image.shape) < 1:
        raise ValueError(f"image_chw must be a non-empty (C, H, W) array, got shape {image.shape}")
    if stride < 1 or tile < 1 or batch_size < 1:
        raise ValueError(f"tile, stride and batch_size must be >= 1, got {tile}, {stride}, {batch_size}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if blend not in BLENDS:
        raise ValueError(f"blend must be one of {', '.join(BLENDS)}, got {blend!r}")
    return image.astype(np.float32, copy=False)


def _tile_and_step(height: int, width: int, tile: int, overlap: float, stride: int) -> tuple[int, int]:
    """The longest window side (at most :data:`SPLIT_TILE` once the image is split) and the step between windows."""
    if max(height, width) > tile or height * width > SPLIT_PIXELS:
        tile = min(tile, SPLIT_TILE)
    tile = max(stride, tile // stride * stride)
    return tile, max(stride, int(tile * (1.0 - overlap)) // stride * stride)


def _blend_windows(
    predictor: Predictor, image: np.ndarray, windows: list[tuple[int, int, int, int]], padded: tuple[int, int],
    batch_size: int, blend: str, ramp: int,
) -> np.ndarray:
    """Predict the ``windows`` of ``image`` ``batch_size`` at a time and blend them into float32 ``(K, H, W)``."""
    _, height, width = image.shape
    th, tw = windows[0][2], windows[0][3]
    # Axes covered by a single window need no taper (it would only cost precision).
    wy = _window_1d(th, blend if height > th else "constant", ramp)
    wx = _window_1d(tw, blend if width > tw else "constant", ramp)
    weight = np.outer(wy, wx).astype(np.float32)
    # The windows form a grid and the weights are separable, so their sum is too: two 1-D sums
    # instead of an (H, W) weight map.
    norm_y = _axis_sum(wy, sorted({w[0] for w in windows}), height)
    norm_x = _axis_sum(wx, sorted({w[1] for w in windows}), width)

    out: np.ndarray | None = None
    for first in range(0, len(windows), batch_size):
        group = windows[first : first + batch_size]
        batch = np.stack([_pad_tile(image[:, y0 : y0 + th, x0 : x0 + tw], padded) for y0, x0, _, _ in group])
        pred = _predict(predictor, batch)
        if out is None:
            out = np.zeros((pred.shape[1], height, width), np.float32)
        for (y0, x0, _, _), p in zip(group, pred, strict=True):
            out[:, y0 : y0 + th, x0 : x0 + tw] += p[:, :th, :tw] * weight
    if out is None:  # unreachable: there is always at least one window
        raise RuntimeError("no tile was predicted")
    out /= norm_y[None, :, None].astype(np.float32)
    out /= norm_x[None, None, :].astype(np.float32)
    return out


def _axis_sum(window: np.ndarray, starts: list[int], size: int) -> np.ndarray:
    """Sum over ``starts`` of the 1-D ``window`` placed at each start, on an axis of ``size``."""
    total = np.zeros(size, np.float64)
    for start in starts:
        total[start : start + window.size] += window
    return total
