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
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from nucleiseg.inference.size_probe import (
    SHRINK,
    STAT_NAMES,
    VIEW,
    WHOLE_PIXELS,
    ZOOMS,
    ProbFn,
    busiest_centre,
    probe_stats,
    shrink_view,
    view_box,
    view_stats,
)

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
