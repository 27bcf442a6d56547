"""Nucleus size estimation from a few small views of the image, before segmenting it.

The network was trained on nuclei of about ``infer.target_diameter`` pixels; far from that size
it shatters big nuclei into pieces and merges tiny ones, so measuring the objects of one native
pass says little about their true size. Instead the estimator *probes* the image at the zooms
the size model's zooms (:data:`ZOOMS` for new fits: 1, 1/4, 1/8; files fitted before carry their own,
such as 1, 1/2, 1/4, 1/8): at zoom ``z`` it takes the central region of side
``view / z`` pixels (the whole image when smaller), shrinks it by ``z`` so the network sees at
most ``view x view`` pixels, and summarises the probabilities with cheap statistics
(:func:`view_stats`: connected components of the foreground and of the marker map, mean
confidence, uncertain pixels, contour mass). A small regression (:class:`SizeModel`: a
one-hidden-layer MLP or a linear ridge, fitted by :mod:`nucleiseg.inference.size_fit` and saved
as ``size_model.json`` beside the weights, evaluated with numpy) maps those statistics to the
logarithm of the median nucleus diameter in input pixels.

The probe costs a bounded number of network pixels (at most one ``view x view`` view per
coarse zoom plus the zoom-1 view), whatever the image size. A *gate* (:meth:`SizeModel.gate_diameter`) ends the
probe after the zoom-1 view when that view already shows enough confident objects of about the
training size (most ordinary images): the image is then segmented at native scale and the
coarser views are never computed. When the image has at most :data:`WHOLE_PIXELS`
pixels, the zoom-1 view is the whole image, so when the estimate says "native scale" the
segmenter reuses those probabilities instead of predicting them twice. Measured accuracy and
cost: ``docs/size_estimation.md``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from nucleiseg.inference.scale import rescale_image, shrink_box

__all__ = [
    "SHRINK",
    "SIZE_MODEL_FILE",
    "STAT_NAMES",
    "ZOOMS",
    "SizeEstimate",
    "SizeModel",
    "busiest_centre",
    "estimate_size",
    "load_size_model",
    "objects_seen",
    "probe_stats",
    "shrink_view",
    "view_box",
    "view_stats",
]

#: File name of a fitted size model inside a model folder.
SIZE_MODEL_FILE = "size_model.json"
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


def design(stats: np.ndarray, zooms: Sequence[float] = ZOOMS, target: float = 18.0) -> np.ndarray:
    """Regression inputs from probe statistics: per zoom, log diameters in input pixels and quality.

    Every zoom contributes its three log-diameter estimates (scaled back to input pixels), log
    object counts, confidence, uncertainty and contour mass, each multiplied by the zoom's
    weight ``w_z`` (``exp(-(log(area_d / target))^2 / 2)``: how close the view's objects are to the
    size the network knows) and ``w_z`` itself, so a linear model can lean on the zooms where the
    network is reliable. Missing views give zeros.
    """
    rows = []
    for i, zoom in enumerate(zooms):
        s = dict(zip(STAT_NAMES, stats[i], strict=True))
        if not s["present"] or (s["n_markers"] + s["n_fg"]) == 0:
            rows.append(np.zeros(11))
            continue
        logs = [math.log(max(s[k], 1.0) / zoom) for k in ("marker_d", "fg_d", "area_d")]
        weight = math.exp(-0.5 * math.log(max(s["area_d"], 1.0) / target) ** 2)
        quality = [math.log1p(s["n_markers"]), math.log1p(s["n_fg"]), s["fg_fraction"], s["confidence"], s["uncertain"], s["contour"], s["separation"]]
        rows.append(np.array([weight, *(weight * v for v in logs), *(weight * q for q in quality)]))
    x = np.concatenate(rows)
    total = float(sum(r[0] for r in rows))
    # The weighted average of the area-based estimate over zooms: the main predictor.
    avg = sum(r[3] for r in rows) / total if total > 1e-9 else math.log(target)
    return np.concatenate([[avg, total], x])


@dataclass
class SizeModel:
    """Regression from :func:`design` inputs to ``log(median diameter)`` in input pixels.

    Linear (ridge, :meth:`fit`) or with one tanh hidden layer (``hidden_weight``,
    ``hidden_bias``; fitted by :func:`nucleiseg.inference.size_fit.fit_mlp`): both are evaluated
    with numpy only, from the JSON file.

    Attributes
    ----------
    mean, scale : list of float
        Standardisation of the inputs.
    coef : list of float
        Weights of the standardised inputs.
    intercept : float
        Bias (log pixels).
    zooms, view, whole_pixels, target
        Probe settings the model was fitted with.
    meta : dict
        Provenance (data, seed, command, fit figures).
    hidden_weight, hidden_bias : lists or None
        ``(d, h)`` weights and ``(h,)`` bias of the hidden layer; None for a linear model.
    gate_objects : int
        The gate (:meth:`gate_diameter`) opens only when the zoom-1 view shows at least this many
        marker objects; 0 turns the gate off (every view is probed), as in files without it.
    gate_confidence : float
        ... and their mean foreground probability is at least this ...
    gate_band : float
        ... and their diameter (``area_d``) is within this factor of ``target`` (exclusive).
    log_offset : float
        Added to every log-diameter the model gives (regression and gate): the calibration
        :func:`nucleiseg.inference.size_calibration.calibrate_offset` chooses out of fold on the training
        samples. A diameter counts as right within +-30 %, a band that is lopsided in log space
        (``log 0.7 .. log 1.3``), so the estimate that is right most often sits a little below
        the median of the regression's errors. 0 in files without it.
    shrink : str
        How the probe shrinks its coarse views (:func:`shrink_view`): ``"box"`` for new fits
        (:data:`SHRINK`), ``"bilinear"`` in files without it (fitted on such views).
    """

    mean: list[float]
    scale: list[float]
    coef: list[float]
    intercept: float
    zooms: list[float] = field(default_factory=lambda: list(ZOOMS))
    view: int = VIEW
    whole_pixels: int = WHOLE_PIXELS
    target: float = 18.0
    meta: dict = field(default_factory=dict)
    hidden_weight: list[list[float]] | None = None
    hidden_bias: list[float] | None = None
    gate_objects: int = 0
    gate_confidence: float = 1.0
    gate_band: float = 1.5
    log_offset: float = 0.0
    shrink: str = "bilinear"

    def gate_diameter(self, zoom1: np.ndarray) -> float | None:
        """The diameter read off the zoom-1 view's statistics when the gate opens, else None.

        The gate opens when the view shows at least ``gate_objects`` marker objects with mean
        confidence at least ``gate_confidence`` and a diameter (the mean foreground area per
        object, ``area_d``, in input pixels at zoom 1) strictly within ``gate_band`` of
        ``target``: nuclei of about the training size, seen clearly, so the coarser views (made
        for nuclei the network shatters or merges) are not needed. The diameter returned is
        ``area_d`` times ``exp(log_offset)``, calibrated like the regression's.
        """
        s = dict(zip(STAT_NAMES, zoom1, strict=True))
        if self.gate_objects <= 0 or not s["present"]:
            return None
        d = float(s["area_d"])
        ok = (s["n_markers"] >= self.gate_objects and s["confidence"] >= self.gate_confidence
              and self.target / self.gate_band < d < self.target * self.gate_band)
        return d * math.exp(self.log_offset) if ok else None

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, alpha: float = 1.0, **settings: object) -> SizeModel:
        """Closed-form ridge on standardised ``x`` (``(n, d)``) to ``y`` (``(n,)``, log pixels)."""
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        mean, scale = x.mean(axis=0), x.std(axis=0)
        scale[scale < 1e-9] = 1.0
        z = (x - mean) / scale
        coef = np.linalg.solve(z.T @ z + alpha * np.eye(z.shape[1]), z.T @ (y - y.mean()))
        return cls(mean.tolist(), scale.tolist(), coef.tolist(), float(y.mean()), **settings)  # type: ignore[arg-type]

    def predict_log(self, x: np.ndarray) -> np.ndarray:
        """``log(diameter)`` for design rows ``x`` (``(n, d)`` or ``(d,)``)."""
        z = (np.asarray(x, np.float64) - np.asarray(self.mean)) / np.asarray(self.scale)
        if self.hidden_weight is not None:
            z = np.tanh(z @ np.asarray(self.hidden_weight) + np.asarray(self.hidden_bias))
        return z @ np.asarray(self.coef) + self.intercept + self.log_offset

    def save(self, path: str | Path) -> None:
        """Write the model as JSON."""
        Path(path).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> SizeModel:
        """Read a model written by :meth:`save`."""
        return cls(**json.loads(Path(path).read_text()))


def load_size_model(folder: str | Path | None) -> SizeModel | None:
    """The size model of a model folder (``size_model.json``), or None when it has none."""
    if folder is None:
        return None
    path = Path(folder) / SIZE_MODEL_FILE
    return SizeModel.load(path) if path.is_file() else None


@dataclass
class SizeEstimate:
    """The outcome of :func:`estimate_size`.

    Attributes
    ----------
    diameter : float
        Estimated median nucleus diameter in input pixels.
    native : np.ndarray or None
        Zoom-1 probabilities of the whole image, when the probe computed them.
    stats : np.ndarray
        Per-zoom statistics (:func:`probe_stats`); rows of views not computed are zero.
    gated : bool
        True when the gate ended the probe after the zoom-1 view (:meth:`SizeModel.gate_diameter`).
    centre : tuple of int or None
        ``(y, x)`` the views were centred on when the central views saw nothing and the probe
        looked again elsewhere (:func:`busiest_centre`); None for the image's centre.
    """

    diameter: float
    native: np.ndarray | None
    stats: np.ndarray
    gated: bool = False
    centre: tuple[int, int] | None = None


def estimate_size(norm: np.ndarray, predict: ProbFn, model: SizeModel) -> SizeEstimate:
    """Estimate the median nucleus diameter of a normalised ``(H, W, C)`` image.

    Parameters
    ----------
    norm : np.ndarray
        Normalised image.
    predict : callable
        ``(C, h, w) -> (K, h, w)`` probabilities.
    model : SizeModel
        Fitted regression (:func:`load_size_model`).

    Returns
    -------
    SizeEstimate
        The diameter is clipped to 1 .. 4 times the image's longer side. When the two finest views
        (zoom 1 and the next) of an image larger than the coarsest view's region show no object, the views
        are taken once more around :func:`busiest_centre`, and kept when more of them see
        objects (or the gate opens).
    """
    est = _probe(norm, predict, model)
    side = int(round(model.view / min(model.zooms)))  # what the coarsest view covers
    if not objects_seen(est.stats[:2]) and max(norm.shape[:2]) > side:
        # The two finest central views show nothing (an empty centre of a large image; the
        # coarse views catch at most an edge of the nuclei): look once more where the image has
        # the most structure, and keep that probe when more of its views see objects.
        moved = _probe(norm, predict, model, busiest_centre(norm, model.view))
        if moved.gated or _views_seeing(moved.stats) > _views_seeing(est.stats):
            return moved
    return est


def _views_seeing(stats: np.ndarray) -> int:
    """How many views of a probe (:func:`probe_stats` rows) found an object."""
    counts = np.asarray(stats)[:, [STAT_NAMES.index("n_markers"), STAT_NAMES.index("n_fg")]]
    return int((counts.sum(axis=1) > 0).sum())


def objects_seen(stats: np.ndarray) -> bool:
    """Whether any view of a probe (:func:`probe_stats` rows) found an object."""
    return _views_seeing(stats) > 0


def _probe(norm: np.ndarray, predict: ProbFn, model: SizeModel, centre: tuple[int, int] | None = None) -> SizeEstimate:
    """:func:`estimate_size` with the views centred on ``centre`` (default: the image's centre)."""
    zooms = list(model.zooms)
    first, native = probe_stats(norm, predict, zooms[:1], model.view, model.whole_pixels, centre, model.shrink)  # views are independent
    gated = model.gate_diameter(first[0]) if zooms[0] == 1.0 else None  # the gate may end the probe here
    if gated is not None:
        stats = np.zeros((len(zooms), len(STAT_NAMES)), np.float64)
        stats[0] = first[0]
        return SizeEstimate(gated, native, stats, gated=True, centre=centre)
    rest, more = probe_stats(norm, predict, zooms[1:], model.view, model.whole_pixels, centre, model.shrink)
    stats, native = np.concatenate([first, rest]), native if native is not None else more
    log_d = float(model.predict_log(design(stats, model.zooms, model.target)))
    diameter = float(np.clip(math.exp(log_d), 1.0, 4.0 * max(norm.shape[:2])))
    return SizeEstimate(diameter, native, stats, centre=centre)
