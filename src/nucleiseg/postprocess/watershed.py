"""Probability maps to instance labels: thresholds, markers and marker-controlled watershed.

Two kinds of network output are handled by :func:`probabilities_to_labels`:

* ``K == 1`` (binary): the foreground probability is thresholded and touching nuclei are split
  by a watershed on the negated distance transform, seeded at its peaks.
* ``K >= 2`` (contour; channel order ``[foreground, contour, separation]``): markers are the
  nucleus cores ``fg * (1 - contour) * (1 - separation) > marker_threshold`` and the watershed
  floods the negated core probability inside the foreground mask.

Foreground components that receive no marker keep their own label, so a nucleus is never lost
because its core was faint.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import watershed

from nucleiseg.config import PostprocessConfig
from nucleiseg.counting import CHUNK, label_sizes

__all__ = [
    "drop_unconfident",
    "estimate_diameter",
    "fill_holes",
    "foreground_mask",
    "labels_from_mask",
    "labels_from_parts",
    "marker_probability",
    "probabilities_to_labels",
    "remove_small_labels",
    "remove_small_mask",
    "threshold_mask",
    "watershed_by_component",
]

# Otsu thresholds on probabilities are clamped to this range so that an image without nuclei
# (all probabilities near 0) does not get its noise split in two.
OTSU_CLAMP = (0.1, 0.9)


def remove_small_labels(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Set objects with fewer than ``min_size`` pixels to 0 (in place on a copy).

    Parameters
    ----------
    labels : np.ndarray
        Integer label image, 0 = background.
    min_size : int
        Objects with strictly fewer pixels than this are removed.

    Returns
    -------
    np.ndarray
        Copy of ``labels`` without the small objects (ids are not renumbered).
    """
    out = np.array(labels, copy=True)
    if min_size <= 1 or out.size == 0:
        return out
    sizes = label_sizes(out)
    small = sizes < min_size
    small[0] = False
    if small.any():
        out[small[out]] = 0
    return out


def remove_small_mask(mask: np.ndarray, min_size: int) -> np.ndarray:
    """Drop 4-connected components of a boolean mask with fewer than ``min_size`` pixels."""
    if min_size <= 1 or not mask.any():
        return mask
    comps, _ = ndi.label(mask)
    return remove_small_labels(comps, min_size) > 0


def foreground_mask(fg: np.ndarray, cfg: PostprocessConfig) -> np.ndarray:
    """Threshold a foreground probability map (fixed or Otsu), fill holes, drop small objects.

    Parameters
    ----------
    fg : np.ndarray
        ``(H, W)`` foreground probability.
    cfg : PostprocessConfig
        Uses ``threshold``, ``threshold_method``, ``fill_holes`` and ``min_size``.

    Returns
    -------
    np.ndarray
        Boolean ``(H, W)`` foreground mask.
    """
    return remove_small_mask(threshold_mask(fg, cfg), cfg.min_size)


def threshold_mask(fg: np.ndarray, cfg: PostprocessConfig) -> np.ndarray:
    """Thresholded (and, with ``cfg.fill_holes``, hole-filled) mask before small-object removal."""
    if cfg.threshold_method == "otsu":
        finite = fg[np.isfinite(fg)]
        if finite.size == 0 or float(finite.max() - finite.min()) < 1e-6:
            thr = cfg.threshold
        else:
            from skimage.filters import threshold_otsu  # imported here: it pulls in skimage.transform (~0.1 s)

            thr = float(np.clip(threshold_otsu(finite), *OTSU_CLAMP))
    elif cfg.threshold_method == "fixed":
        thr = cfg.threshold
    else:
        raise ValueError(f"threshold_method must be 'fixed' or 'otsu', got {cfg.threshold_method!r}")
    mask = fg > thr
    if cfg.fill_holes:
        mask = fill_holes(mask)
    return mask


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """``scipy.ndimage.binary_fill_holes`` in one labelling pass.

    A hole is a 4-connected background component that does not touch the image border (the
    same rule as SciPy's, which grows the border background by repeated dilation and takes
    tens of milliseconds on a megapixel image).
    """
    mask = np.asarray(mask, bool)
    background, n = ndi.label(~mask)
    if n == 0:
        return mask.copy()
    outside = np.zeros(n + 1, bool)
    for edge in (background[0], background[-1], background[:, 0], background[:, -1]):
        outside[edge] = True
    outside[0] = True  # foreground stays foreground
    return ~outside[background] | mask


def marker_probability(probs: np.ndarray) -> np.ndarray:
    """Nucleus-core probability ``fg * (1 - contour) * (1 - separation)`` of a ``(K>=2, H, W)`` map."""
    core = np.subtract(1.0, probs[1], dtype=np.float32)  # in place from here: one (H, W) array
    core *= probs[0]
    if probs.shape[0] >= 3:
        rest = np.subtract(1.0, probs[2], dtype=np.float32)
        core *= rest
    return core


def _finish(ws: np.ndarray, mask: np.ndarray, min_size: int) -> np.ndarray:
    """Give unmarked foreground components their own ids (in ``ws``, changed in place), drop small objects, relabel 1..n."""
    unmarked = mask & (ws == 0)
    if unmarked.any():
        extra, _ = ndi.label(unmarked)
        ws[unmarked] = extra[unmarked] + ws.max()  # in place: ``ws`` is the caller's own, unshared
        del extra
    del unmarked
    return _keep_only(ws, label_sizes(ws) >= max(min_size, 1))


def _keep_only(labels: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Labels with ``keep[id]`` kept and renumbered 1..n in order, the others (and 0) set to 0."""
    keep = keep.copy()
    keep[0] = False
    lut = np.zeros(keep.size, np.int32)
    lut[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return lut[labels]


def _contour_labels(mask: np.ndarray, core: np.ndarray, cfg: PostprocessConfig, scratch: bool = False) -> np.ndarray:
    """Watershed of the core probability from thresholded cores, inside ``mask``.

    With ``scratch`` the relief is ``core`` negated in place (the caller has no further use for it).
    """
    markers, _ = ndi.label((core > cfg.marker_threshold) & mask)
    markers = remove_small_labels(markers, cfg.min_marker_size)
    relief = np.negative(core, out=core if scratch else None)
    ws = watershed_by_component(relief, markers, mask)
    del markers, relief, core  # freed before the last steps (with ``scratch`` nobody else holds ``core``)
    return _finish(ws, mask, cfg.min_size)


def watershed_by_component(
    image: np.ndarray, markers: np.ndarray, mask: np.ndarray, components: tuple[np.ndarray, int] | None = None
) -> np.ndarray:
    """``skimage.segmentation.watershed(image, markers, mask=mask)``, one mask component at a time.

    A flood inside a mask never crosses from one 4-connected component of the mask to another,
    so each component can be solved on its own: a component holding one marker becomes that
    marker's region without flooding, one without markers stays 0, and only components with
    two or more markers are flooded, each on its bounding-box crop. The result equals the
    whole-image watershed (tested on real predictions and on continuous reliefs) and costs a
    fraction of it, since most nuclei are a component with a single marker. Only where marker
    pixels tie exactly in value can the two differ: scikit-image orders such ties by its heap
    layout, which depends on the rest of the image, so either answer is as valid.

    Parameters
    ----------
    image : np.ndarray
        ``(H, W)`` relief to flood (low values first).
    markers : np.ndarray
        ``(H, W)`` integer markers, 0 = none; every marker pixel must lie inside ``mask``.
    mask : np.ndarray
        ``(H, W)`` boolean region to label.
    components : (np.ndarray, int), optional
        ``scipy.ndimage.label(mask)`` when the caller already has it.

    Returns
    -------
    np.ndarray
        Labels of ``markers``' dtype (int32 at least), 0 outside the flooded components.
    """
    comps, n = ndi.label(mask) if components is None else components
    dtype = np.promote_types(markers.dtype, np.int32)
    if n == 0:
        return np.zeros(markers.shape, dtype)
    flat_m, flat_c = markers.ravel(), comps.ravel()
    marked = np.flatnonzero(flat_m)
    stride = np.int64(flat_m.max()) + 1
    pairs = np.unique(flat_c[marked].astype(np.int64) * stride + flat_m[marked])  # (component, marker)
    pair_comp, pair_marker = np.divmod(pairs, stride)
    per_comp = np.bincount(pair_comp, minlength=n + 1)
    lut = np.zeros(n + 1, dtype)
    single = per_comp[pair_comp] == 1
    lut[pair_comp[single]] = pair_marker[single]
    out = lut[comps]  # the single-marker components filled in, the others 0 (no zeroed copy first)
    slices = ndi.find_objects(comps)
    for k in np.flatnonzero(per_comp >= 2):
        box = slices[k - 1]
        inside = comps[box] == k
        flooded = watershed(image[box], np.where(inside, markers[box], 0), mask=inside)
        out[box][inside] = flooded[inside]
    return out


def labels_from_mask(mask: np.ndarray, cfg: PostprocessConfig | None = None) -> np.ndarray:
    """Split a binary foreground mask into nuclei with distance-transform markers.

    Parameters
    ----------
    mask : np.ndarray
        ``(H, W)`` boolean (or 0/1) foreground mask; it is used as given (no hole filling or
        small-object removal before the split).
    cfg : PostprocessConfig, optional
        Uses ``diameter``, ``marker_distance`` and ``min_size``.

    Returns
    -------
    np.ndarray
        int32 labels numbered 1..n.
    """
    cfg = cfg or PostprocessConfig()
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {mask.shape}")
    mask = mask.astype(bool, copy=False)
    if not mask.any():
        return np.zeros(mask.shape, np.int32)
    comps, n = ndi.label(mask)
    dist = ndi.distance_transform_edt(mask).astype(np.float32)
    # A light blur removes the one-pixel ripples of a jagged outline without moving real peaks.
    smooth = ndi.gaussian_filter(dist, 1.0) * mask
    min_distance = max(1, int(round(cfg.marker_distance * cfg.diameter)))
    from skimage.feature import peak_local_max  # imported here: it pulls in scipy.spatial (~0.15 s); contour models never need it

    peaks = peak_local_max(smooth, min_distance=min_distance, labels=comps, exclude_border=False)
    markers = np.zeros(mask.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1, dtype=np.int32)
    return _finish(watershed_by_component(-smooth, markers, mask, (comps, n)), mask, cfg.min_size)


def probabilities_to_labels(probs: np.ndarray, cfg: PostprocessConfig | None = None) -> np.ndarray:
    """Turn network probabilities into an instance label image.

    Parameters
    ----------
    probs : np.ndarray
        ``(K, H, W)`` probabilities (a 2-D array is taken as ``K = 1``). Channel 0 is the
        foreground; with ``K >= 2`` channel 1 is the contour and channel 2 the separation zone.
    cfg : PostprocessConfig, optional
        Thresholds, marker settings and size limits; defaults when omitted.

    Returns
    -------
    np.ndarray
        int32 ``(H, W)`` labels, 0 = background, nuclei numbered 1..n.
    """
    cfg = cfg or PostprocessConfig()
    probs = np.asarray(probs)
    if probs.ndim == 2:
        probs = probs[None]
    if probs.ndim != 3 or probs.shape[0] < 1:
        raise ValueError(f"probs must have shape (K, H, W), got {probs.shape}")
    probs = probs.astype(np.float32, copy=False)
    if np.isnan(probs).any():
        probs = np.nan_to_num(probs, nan=0.0)
    return labels_from_parts(probs, foreground_mask(probs[0], cfg), cfg)


def labels_from_parts(
    probs: np.ndarray, mask: np.ndarray, cfg: PostprocessConfig, core: np.ndarray | None = None
) -> np.ndarray:
    """Second half of :func:`probabilities_to_labels`, given a ready foreground mask.

    Parameters
    ----------
    probs : np.ndarray
        ``(K, H, W)`` float probabilities without NaN.
    mask : np.ndarray
        Boolean ``(H, W)`` foreground mask from :func:`foreground_mask`.
    cfg : PostprocessConfig
        Marker and size settings.
    core : np.ndarray, optional
        Precomputed :func:`marker_probability` (``K >= 2``), to save time when tuning.

    Returns
    -------
    np.ndarray
        int32 labels numbered 1..n.
    """
    if probs.shape[0] == 1:
        labels = labels_from_mask(mask, cfg)
    elif not mask.any():
        return np.zeros(mask.shape, np.int32)
    else:
        labels = _contour_labels(mask, marker_probability(probs) if core is None else core, cfg, scratch=core is None)
    return drop_unconfident(labels, probs[0], cfg.min_confidence)


def drop_unconfident(labels: np.ndarray, fg: np.ndarray, min_confidence: float) -> np.ndarray:
    """Remove objects whose mean foreground probability is below ``min_confidence``; relabel 1..n.

    Parameters
    ----------
    labels : np.ndarray
        int ``(H, W)`` labels numbered 1..n.
    fg : np.ndarray
        ``(H, W)`` foreground probability.
    min_confidence : float
        0 (or less) keeps every object and returns ``labels`` unchanged.
    """
    n = int(labels.max(initial=0))
    if min_confidence <= 0 or n == 0:
        return labels
    flat, values = labels.ravel(), fg.ravel()
    total = np.zeros(n + 1, np.float64)
    for start in range(0, flat.size, CHUNK):  # in chunks: bincount copies its weights to float64
        part = slice(start, start + CHUNK)
        total += np.bincount(flat[part], weights=values[part], minlength=n + 1)
    mean = total / np.maximum(label_sizes(labels), 1)
    return _keep_only(labels, mean >= min_confidence)


def estimate_diameter(labels: np.ndarray, default: float = float("nan")) -> float:
    """Median equivalent-circle diameter ``2 * sqrt(area / pi)`` of the objects in ``labels``.

    Parameters
    ----------
    labels : np.ndarray
        Integer label image (0 = background) or a boolean mask (its connected components count).
    default : float
        Returned when there is no object.

    Returns
    -------
    float
        The median diameter in pixels, or ``default``.
    """
    labels = np.asarray(labels)
    if labels.dtype == bool:
        labels, _ = ndi.label(labels)
    if labels.size == 0:
        return default
    areas = label_sizes(labels)[1:]
    areas = areas[areas > 0]
    if areas.size == 0:
        return default
    return float(2.0 * math.sqrt(float(np.median(areas)) / math.pi))

