"""Intensity normalisation shared by training and inference, plus image "style" features.

Every image reaching a network goes through :func:`normalize_image`, so training and inference
see identical value ranges. Style features (:func:`image_style_features`) summarise what kind of
microscopy an image is (fluorescence, brightfield, stained tissue) so rare kinds can be
oversampled during training (:func:`style_clusters`).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from nucleiseg.config import NormalizeConfig

_MODES = ("percentile", "minmax", "none")
_EPS = 1e-6


def _as_float_channels(image: np.ndarray) -> np.ndarray:
    """Validate ``image`` and return it as float32 ``(H, W, C)`` with C in {1, 3}, alpha dropped.

    Integer images are divided by their dtype's maximum (uint8 by 255, uint16 by 65535), so the
    result of mode ``"none"`` lies in 0..1; float images are kept as they are.
    """
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise ValueError(f"image must be (H, W) or (H, W, 1|3|4), got shape {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image is empty: shape {image.shape}")
    if image.dtype == bool:
        image = image.astype(np.uint8)
    if not (np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)):
        raise ValueError(f"image dtype must be integer or float, got {image.dtype}")
    if image.shape[2] == 4:
        image = image[:, :, :3]
    if np.issubdtype(image.dtype, np.integer):
        scale = float(np.iinfo(image.dtype).max)
        out = image.astype(np.float32) / np.float32(scale)
    else:
        out = image.astype(np.float32)
        if not np.all(np.isfinite(out)):
            raise ValueError("image contains NaN or infinite values")
    return out


def _gray(image: np.ndarray) -> np.ndarray:
    """Mean over the channel axis of an ``(H, W, C)`` float image, as ``(H, W)``."""
    return image.mean(axis=2) if image.shape[2] > 1 else image[:, :, 0]


def is_bright_background(image: np.ndarray) -> bool:
    """Tell whether the background is brighter than the nuclei (brightfield, stained tissue).

    The gray image is split at Otsu's threshold; nuclei rarely cover half of an image, so when
    more than half of the pixels lie above the threshold the bright class is the background.
    Constant images count as dark-background.

    Parameters
    ----------
    image : np.ndarray
        ``(H, W)`` or ``(H, W, 3|4)`` image of any integer or float dtype.

    Returns
    -------
    bool
        True when the background is bright.
    """
    gray = _gray(_as_float_channels(image))
    if float(gray.max() - gray.min()) <= _EPS:
        return False
    from skimage.filters import threshold_otsu  # imported here: it pulls in skimage.transform, which segmenting does not need

    thresh = threshold_otsu(gray)
    return bool(np.mean(gray > thresh) > 0.5)


class IntensityRange(NamedTuple):
    """The intensity mapping :func:`normalize_image` applies: ``low`` -> 0, ``high`` -> 1, then
    optionally inverted (bright-background images). Computed once for a whole image by
    :func:`intensity_range`, it lets the tiles of an image too large for memory share one mapping."""

    low: float
    high: float
    invert: bool


def _range_of(img: np.ndarray, cfg: NormalizeConfig, invert: bool) -> IntensityRange:
    """The range of a float ``(H, W, C)`` image already reduced to gray when ``cfg.grayscale``."""
    if cfg.mode == "percentile":
        lo, hi = np.percentile(img, [cfg.low, cfg.high])
    else:
        lo, hi = float(img.min()), float(img.max())
    return IntensityRange(float(lo), float(hi), invert)


def _gray_if(img: np.ndarray, cfg: NormalizeConfig) -> np.ndarray:
    return _gray(img)[:, :, None] if cfg.grayscale and img.shape[2] > 1 else img


def intensity_range(image: np.ndarray, cfg: NormalizeConfig) -> IntensityRange:
    """The :class:`IntensityRange` :func:`normalize_image` computes for ``image`` (or a subsample of it)."""
    img = _as_float_channels(image)
    return _range_of(_gray_if(img, cfg), cfg, bool(cfg.invert_bright and is_bright_background(img)))


def stretch(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map ``low``..``high`` to 0..1 and clip; an (almost) empty range gives zeros."""
    span = float(high - low)
    if span <= _EPS:  # constant (or nearly constant) image: nothing to stretch
        return np.zeros_like(values)
    out = np.subtract(values, values.dtype.type(low))  # then in place: one temporary, not two
    out /= values.dtype.type(span)
    return np.clip(out, 0.0, 1.0, out=out)


def normalize_image(
    image: np.ndarray, cfg: NormalizeConfig, intensity: IntensityRange | None = None, share_channels: bool = False,
) -> np.ndarray:
    """Turn a raw microscopy image into the float32 network input.

    Steps: drop alpha; optionally average RGB to gray (``cfg.grayscale``); scale intensities of
    all channels *jointly* (colour balance is kept) so the ``cfg.low``/``cfg.high`` percentiles
    (or min/max) map to 0/1, **clipped to [0, 1]** (colour augmentations such as gamma and HSV
    need that range); optionally invert bright-background images so nuclei are bright
    (``cfg.invert_bright``, decided by :func:`is_bright_background` on the raw image); finally
    replicate gray to ``cfg.channels`` channels or average RGB when ``cfg.channels == 1``.
    Constant images become all zeros.

    Parameters
    ----------
    image : np.ndarray
        ``(H, W)`` or ``(H, W, 1|3|4)`` array, uint8/uint16/other integer or float.
    cfg : NormalizeConfig
        Normalisation settings.
    intensity : IntensityRange, optional
        Use this mapping (:func:`intensity_range` of the whole image) instead of the image's own.
    share_channels : bool
        Return a gray image replicated to several channels as a read-only view whose channels
        share one plane (``np.broadcast_to``, 4 bytes per pixel instead of ``4 * channels``);
        the values are the same. For inference, which only reads its input.

    Returns
    -------
    np.ndarray
        float32 ``(H, W, cfg.channels)``, values in 0..1 (mode ``"none"``: integer images divided
        by their dtype maximum, float images unchanged); C-contiguous unless ``share_channels``.
    """
    if cfg.mode not in _MODES:
        raise ValueError(f"unknown normalize mode {cfg.mode!r}; expected one of {', '.join(_MODES)}")
    if cfg.mode == "percentile" and not 0.0 <= cfg.low < cfg.high <= 100.0:
        raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {cfg.low}, {cfg.high}")
    if cfg.channels < 1:
        raise ValueError(f"channels must be >= 1, got {cfg.channels}")
    img = _as_float_channels(image)
    invert = intensity is None and cfg.invert_bright and is_bright_background(img)  # decided on the colour image
    img = _gray_if(img, cfg)
    if intensity is None:
        intensity = _range_of(img, cfg, bool(invert))
    if cfg.mode != "none":
        img = stretch(img, intensity.low, intensity.high)
        if intensity.invert:
            img = 1.0 - img
    elif intensity.invert:
        img = np.float32(intensity.low + intensity.high) - img
    n = img.shape[2]
    if n != cfg.channels:
        if n == 1 and share_channels:
            return np.broadcast_to(img.astype(np.float32, copy=False), img.shape[:2] + (cfg.channels,))
        if n == 1:
            img = np.repeat(img, cfg.channels, axis=2)
        elif cfg.channels == 1:
            img = _gray(img)[:, :, None]
        else:
            raise ValueError(f"cannot turn a {n}-channel image into {cfg.channels} channels")
    return np.ascontiguousarray(img, dtype=np.float32)


def image_style_features(image: np.ndarray) -> np.ndarray:
    """Small feature vector describing an image's kind, for clustering image styles.

    Parameters
    ----------
    image : np.ndarray
        ``(H, W)`` or ``(H, W, 3|4)`` raw image.

    Returns
    -------
    np.ndarray
        float32 ``[is_colour, mean, std, bright_background]``: ``is_colour`` is 1 when the
        channels differ (mean max-min channel spread above 2 % of the dtype range); ``mean`` and
        ``std`` are taken from the 1-99.8 percentile normalised gray image; the last entry is
        :func:`is_bright_background` as 0/1.
    """
    img = _as_float_channels(image)
    if img.shape[2] == 3:
        spread = float(np.mean(img.max(axis=2) - img.min(axis=2)))
        rng = float(img.max() - img.min())
        is_colour = rng > _EPS and spread / max(rng, _EPS) > 0.02
    else:
        is_colour = False
    gray = _gray(img)
    gray = stretch(gray, *np.percentile(gray, [1.0, 99.8]))
    bright = is_bright_background(img)
    return np.array([float(is_colour), gray.mean(), gray.std(), float(bright)], dtype=np.float32)


def style_clusters(features: np.ndarray, n_clusters: int, seed: int = 0) -> np.ndarray:
    """Cluster style feature vectors with k-means (deterministic for a given ``seed``).

    Parameters
    ----------
    features : np.ndarray
        ``(N, F)`` array, e.g. stacked :func:`image_style_features`.
    n_clusters : int
        Wanted number of clusters; reduced to the number of distinct rows, and further if
        k-means ends with an empty cluster.
    seed : int
        Seed of the k-means++ initialisation.

    Returns
    -------
    np.ndarray
        int64 ``(N,)`` cluster index per row, relabelled 0..k-1 in order of first appearance.
    """
    from scipy.cluster.vq import ClusterError, kmeans2  # imported here: training only, ~40 ms that segmenting does not need

    feats = np.asarray(features, dtype=np.float64)
    if feats.ndim != 2 or feats.shape[0] == 0:
        raise ValueError(f"features must be a non-empty (N, F) array, got shape {feats.shape}")
    if n_clusters < 1:
        raise ValueError(f"n_clusters must be >= 1, got {n_clusters}")
    k = min(n_clusters, len(np.unique(feats, axis=0)))
    labels = np.zeros(len(feats), dtype=np.int64)
    while k > 1:
        try:
            _, labels = kmeans2(feats, k, minit="++", missing="raise", rng=np.random.default_rng(seed))
            break
        except ClusterError:
            k -= 1
    else:
        labels = np.zeros(len(feats), dtype=np.int64)
    _, first = np.unique(labels, return_index=True)
    order = np.argsort(first)
    remap = np.empty(labels.max() + 1, dtype=np.int64)
    remap[np.unique(labels)[order]] = np.arange(len(order))
    return remap[labels]
