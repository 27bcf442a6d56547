"""The size probe: a few small views of an image at decreasing zooms, and cheap statistics of each.

At zoom ``z`` the probe takes a region of side ``view / z`` pixels (:func:`view_box`; the whole
image at zoom 1 when it has at most :data:`WHOLE_PIXELS` pixels), shrinks it by ``z``
(:func:`shrink_view`) so the network sees at most ``view x view`` pixels, and summarises the
probabilities with :func:`view_stats` (connected components of the foreground and of the marker
map, mean confidence, uncertain pixels, contour mass). :func:`probe_stats` runs the views of one
image; :func:`busiest_centre` picks where to look when the image's centre is empty. The
regression that turns these statistics into a diameter is in :mod:`nucleiseg.inference.size`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from scipy import ndimage as ndi

from nucleiseg.inference.scale import rescale_image, shrink_box

__all__ = [
    "MIN_VIEW",
    "SHRINK",
    "STAT_NAMES",
    "VIEW",
    "WHOLE_PIXELS",
    "ZOOMS",
    "busiest_centre",
    "probe_stats",
    "shrink_view",
    "view_box",
    "view_stats",
]

#: Zooms a newly fitted size model probes the image at, largest first (zoom 1 must come first:
#: the gate reads it, and its whole-image view is reused). Chosen with ``benchmarks/size_zooms.py``:
#: without the 1/2 view of (1, 1/2, 1/4, 1/8) the fits were more accurate on the validation zooms
#: (0.903 against 0.887 within +-30 %, mean of 4 seeds), and the coarse views of a 256 x 256 image
#: fell from 0.33 to 0.08 of its pixels.
ZOOMS: tuple[float, ...] = (1.0, 0.25, 0.125)
#: How a newly fitted size model's coarse views are shrunk: ``"box"``, block means over whole
#: ``1 / zoom`` blocks (:func:`~nucleiseg.inference.scale.shrink_box`; ~0.9 ms for both coarse
#: views of a 256 x 256 image, the 1/8 one made from the 1/4 one) instead of ``"bilinear"``
#: (:func:`~nucleiseg.inference.scale.rescale_image`, the segmenter's own zoom; ~2.3 ms), which
#: files fitted before carry.
SHRINK = "box"
#: Largest side of a view the network sees.
VIEW = 192
#: Images with at most this many pixels are probed whole at zoom 1 (the pass can be reused).
WHOLE_PIXELS = 400 * 400
#: Views smaller than this on a side are skipped (nothing to see).
MIN_VIEW = 16
#: Statistics of one view, in the order :func:`view_stats` returns them.
STAT_NAMES = (
    "present", "n_markers", "n_fg", "fg_fraction", "marker_d", "fg_d", "area_d",
    "confidence", "uncertain", "contour", "separation",
)

ProbFn = Callable[[np.ndarray], np.ndarray]


def view_box(
    shape: tuple[int, int], zoom: float, view: int = VIEW, whole_pixels: int = WHOLE_PIXELS,
    centre: tuple[int, int] | None = None,
) -> tuple[int, int, int, int]:
    """``(y0, y1, x0, x1)``: the region of an image of ``shape`` that zoom ``zoom`` looks at.

    At zoom 1 an image of at most ``whole_pixels`` pixels is taken whole; otherwise the region's
    sides are at most ``view / zoom`` pixels, centred on ``centre`` (default: the image's centre)
    and shifted inside the image where needed.
    """
    h, w = int(shape[0]), int(shape[1])
    if zoom == 1.0 and h * w <= whole_pixels:
        return 0, h, 0, w
    side = int(round(view / zoom))
    ch, cw = min(h, side), min(w, side)
    if centre is None:
        y0, x0 = (h - ch) // 2, (w - cw) // 2
    else:
        y0 = min(max(int(centre[0]) - ch // 2, 0), h - ch)
        x0 = min(max(int(centre[1]) - cw // 2, 0), w - cw)
    return y0, y0 + ch, x0, x0 + cw


def busiest_centre(norm: np.ndarray, side: int) -> tuple[int, int]:
    """Centre ``(y, x)`` of the ``side x side`` region of an ``(H, W, C)`` image with the most structure.

    Structure is the mean absolute difference from the image's median intensity (per channel),
    on a copy subsampled to at most ~512 px a side: flat background (empty glass, an empty well
    centre, dark space around cells) scores low, nuclei high. The size probe centres its views
    there when its two finest central views (zoom 1 and the next) showed no object; ``side`` is its smallest view's region,
    so the point lies among the nuclei and the larger views around it hold them too.
    """
    h, w = norm.shape[:2]
    step = max(1, min(side // 4, -(-max(h, w) // 512)))
    thumb = np.asarray(norm[::step, ::step], np.float32)
    thumb = thumb if thumb.ndim == 3 else thumb[:, :, None]
    median = np.median(thumb.reshape(-1, thumb.shape[2]), axis=0)
    activity = np.abs(thumb - median).mean(axis=2)
    smooth = ndi.uniform_filter(activity, size=max(1, side // step), mode="nearest")
    y, x = np.unravel_index(int(np.argmax(smooth)), smooth.shape)
    return min(int(y) * step + step // 2, h - 1), min(int(x) * step + step // 2, w - 1)


#: 4-connectivity, built once (the probe labels six masks per image).
_FOUR = ndi.generate_binary_structure(2, 1)


def _diameters(mask: np.ndarray) -> tuple[int, float]:
    """Components of ``mask`` (4-connected): their number and median equivalent diameter.

    Components touching the view's border are cut by it, so the median is taken over the others
    when there are any (and over all of them otherwise); specks of one pixel are ignored.
    """
    lab, n = ndi.label(mask, _FOUR)
    if n == 0:
        return 0, 0.0
    areas = np.bincount(lab.ravel(), minlength=n + 1)
    inner = areas >= 2
    inner[0] = False
    for edge in (lab[0], lab[-1], lab[:, 0], lab[:, -1]):
        inner[edge] = False
    chosen = areas[inner] if inner.any() else areas[1:][areas[1:] >= 2]
    if chosen.size == 0:
        chosen = areas[1:]
    return int(n), float(2.0 * math.sqrt(float(np.median(chosen)) / math.pi))


def view_stats(probs: np.ndarray) -> np.ndarray:
    """Cheap statistics of one view's ``(K, h, w)`` probabilities (see :data:`STAT_NAMES`).

    Diameters are in view pixels: ``marker_d`` and ``fg_d`` are the median equivalent-circle
    diameters of the components of the marker map (foreground minus contour and separation) and
    of the foreground, ``area_d`` the diameter of the mean foreground area per marker.

    Returns
    -------
    np.ndarray
        float64 vector of ``len(STAT_NAMES)`` values.
    """
    probs = np.asarray(probs, dtype=np.float32)
    if probs.ndim == 2:
        probs = probs[None]
    fg = probs[0]
    contour = probs[1] if probs.shape[0] > 1 else np.zeros_like(fg)
    sep = probs[2] if probs.shape[0] > 2 else np.zeros_like(fg)
    fg_mask = fg > 0.5
    markers = fg * (1.0 - contour) * (1.0 - sep) > 0.5
    n_markers, marker_d = _diameters(markers)
    n_fg, fg_d = _diameters(fg_mask)
    fg_area = float(np.count_nonzero(fg_mask))
    area_d = 2.0 * math.sqrt(fg_area / (math.pi * max(n_markers, n_fg, 1)))
    confidence = float(fg[fg_mask].mean()) if fg_area else 0.0
    uncertain = float(np.count_nonzero((fg > 0.3) & (fg < 0.7))) / fg.size
    contour_mass = float(contour.sum() / max(float(fg.sum()), 1.0))
    return np.array([
        1.0, n_markers, n_fg, fg_area / fg.size, marker_d, fg_d, area_d,
        confidence, uncertain, contour_mass, float(sep.mean()),
    ], dtype=np.float64)


def _whole_factor(zoom: float) -> int | None:
    """``1 / zoom`` when it is a whole number, else None."""
    k = round(1.0 / zoom)
    return k if k >= 1 and abs(k * zoom - 1.0) < 1e-9 else None


def shrink_view(region: np.ndarray, zoom: float, shrink: str = SHRINK) -> np.ndarray:
    """The ``(C, h, w)`` network input of an ``(H, W, C)`` view region at ``zoom`` (<= 1).

    ``shrink="box"`` averages whole ``1 / zoom`` blocks when ``1 / zoom`` is a whole number
    (:func:`~nucleiseg.inference.scale.shrink_box`); otherwise, and with ``"bilinear"``, the
    region is resized with :func:`~nucleiseg.inference.scale.rescale_image`.
    """
    if shrink not in ("box", "bilinear"):
        raise ValueError(f"shrink must be 'box' or 'bilinear', got {shrink!r}")
    k = _whole_factor(zoom)
    if zoom == 1.0 or (shrink == "box" and k is not None and min(region.shape[:2]) >= k):
        return shrink_box(region.transpose(2, 0, 1), k or 1)
    return np.ascontiguousarray(rescale_image(region, zoom).transpose(2, 0, 1))


def probe_stats(
    norm: np.ndarray, predict: ProbFn, zooms: Sequence[float] = ZOOMS, view: int = VIEW, whole_pixels: int = WHOLE_PIXELS,
    centre: tuple[int, int] | None = None, shrink: str = SHRINK,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Run the network on the views of a normalised ``(H, W, C)`` image.

    Parameters
    ----------
    norm : np.ndarray
        Normalised image, as the segmenter feeds the network.
    predict : callable
        ``(C, h, w) -> (K, h, w)`` probabilities of a whole (small) image.
    zooms, view, whole_pixels, centre
        Probe settings (see :func:`view_box`).
    shrink : str
        How coarse views are shrunk (:func:`shrink_view`); the size model's own setting.

    Returns
    -------
    stats : np.ndarray
        ``(len(zooms), len(STAT_NAMES))``; rows of skipped views are all zero.
    native : np.ndarray or None
        The zoom-1 probabilities when that view was the whole image, else None.
    """
    stats = np.zeros((len(zooms), len(STAT_NAMES)), np.float64)
    native = None
    last: tuple[tuple[int, int, int, int], int, np.ndarray] | None = None  # the previous box-shrunk view
    for i, zoom in enumerate(zooms):
        box = view_box(norm.shape[:2], zoom, view, whole_pixels, centre)
        y0, y1, x0, x1 = box
        if min(y1 - y0, x1 - x0) * zoom < MIN_VIEW:
            continue
        k = _whole_factor(zoom) if shrink == "box" else None
        if last is not None and k is not None and last[0] == box and k % last[1] == 0:
            small = shrink_box(last[2], k // last[1])  # the same region shrunk before: shrink that further
        else:
            small = shrink_view(norm[y0:y1, x0:x1], zoom, shrink)
        if k is not None:
            last = (box, k, small)
        probs = predict(small)
        stats[i] = view_stats(probs)
        if zoom == 1.0 and (y1 - y0, x1 - x0) == norm.shape[:2]:
            native = probs
    return stats, native
