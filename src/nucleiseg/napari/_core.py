"""The napari widgets' work, without napari or Qt: model choices, settings, and an Image layer's
data to a Labels layer tuple."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nucleiseg.bundle import CLASSICAL, ONNX_FILES, ModelBundle, list_bundled

__all__ = [
    "LayerSettings", "diameter_pixels", "find_runs", "is_model_folder", "layer_axes", "model_choices", "model_names",
    "model_postprocess", "runs_dir", "segment_layer_data",
]

#: Environment variable naming the folder that holds training runs.
RUNS_ENV = "NUCLEISEG_RUNS"


def runs_dir() -> Path:
    """The folder of training runs: ``$NUCLEISEG_RUNS``, else ``~/.nucleiseg/runs``."""
    env = os.environ.get(RUNS_ENV, "").strip()
    return Path(env).expanduser() if env else Path.home() / ".nucleiseg" / "runs"


def is_model_folder(folder: str | Path) -> bool:
    """Whether ``folder`` holds a model: ``config.json`` plus ``weights.safetensors`` or an ONNX form."""
    folder = Path(folder)
    has_net = (folder / "weights.safetensors").is_file() or any((folder / f).is_file() for f in ONNX_FILES.values())
    return (folder / "config.json").is_file() and has_net


def find_runs(root: str | Path | None = None) -> list[Path]:
    """Model folders (``config.json`` + weights or ONNX) in ``root`` and one level below, sorted.

    Parameters
    ----------
    root : str or Path, optional
        Default :func:`runs_dir`. A missing folder has no runs.
    """
    root = runs_dir() if root is None else Path(root)
    if not root.is_dir():
        return []
    found = {p.parent for pattern in ("*/config.json", "*/*/config.json") for p in root.glob(pattern)}
    return sorted(f for f in found if is_model_folder(f))


def model_names() -> list[str]:
    """Bundled model names, then ``"classical"``."""
    return list_bundled() + [CLASSICAL]


def model_choices(root: str | Path | None = None, extra: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """``(label, model)`` pairs for the widget: bundled models, run folders, ``extra`` folders, classical.

    Runs are found by :func:`find_runs` in ``root`` (default :func:`runs_dir`) and labelled by
    their path below it; ``extra`` holds folders picked by hand, labelled by their name.
    """
    base = runs_dir() if root is None else Path(root)
    choices = [(name, name) for name in list_bundled()]
    for run in find_runs(base):
        choices.append((f"{run.relative_to(base).as_posix()} (run)", str(run)))
    known = {value for _, value in choices}
    choices += [(f"{Path(f).name} (folder)", str(f)) for f in extra if str(f) not in known]
    return choices + [("classical (no network)", CLASSICAL)]


def model_postprocess(model: str) -> dict[str, float]:
    """The model's own threshold, minimum size and minimum confidence (``thresholds.json`` applied)."""
    post = ModelBundle.open(model).config.postprocess
    return {"threshold": post.threshold, "min_size": post.min_size, "min_confidence": post.min_confidence}


def diameter_pixels(diameter: float | None, unit: str = "px", pixel_size: float | None = None) -> float | None:
    """A nucleus diameter in pixels; None (estimate it) stays None.

    Parameters
    ----------
    diameter : float or None
        The diameter, in ``unit``.
    unit : {"px", "µm"}
        Micrometres need ``pixel_size`` (µm per pixel).
    pixel_size : float, optional
        Micrometres per pixel.
    """
    from nucleiseg.io.units import Diameter

    if diameter is None:
        return None
    if diameter <= 0:
        raise ValueError(f"diameter must be > 0 (or auto), got {diameter}")
    if unit not in ("px", "µm", "um"):
        raise ValueError(f"diameter unit must be px or µm, got {unit!r}")
    return Diameter(float(diameter), "px" if unit == "px" else "um").pixels(pixel_size)  # the CLI's conversion


@dataclass(frozen=True)
class LayerSettings:
    """Every segmentation setting of the widget; None means "the model's own" or "estimate".

    Attributes
    ----------
    model : str
        Bundled model name, model folder or ``"classical"``.
    tta : bool
        Average the 8 flips/rotations.
    threshold, min_size, min_confidence : optional
        Post-processing overrides (:class:`~nucleiseg.config.PostprocessConfig`); None keeps
        the model's.
    diameter : float, optional
        Nucleus diameter in pixels; None estimates it.
    pixel_size : float, optional
        Micrometres per pixel (recorded in the layer's metadata and scale).
    channel : int, optional
        Nuclear channel (RGB colour, or index along the first dimension); None keeps all.
    """

    model: str = "default"
    tta: bool = False
    threshold: float | None = None
    min_size: int | None = None
    min_confidence: float | None = None
    diameter: float | None = None
    pixel_size: float | None = None
    channel: int | None = None

    def settings_for(self, segmenter: Any) -> tuple[Any, Any]:
        """``(InferConfig, PostprocessConfig)``: the segmenter's own with these settings applied."""
        infer = replace(segmenter.config.infer, tta=bool(self.tta), diameter=self.diameter)
        return infer, segmenter.config.postprocess.overridden(self.threshold, self.min_size, self.min_confidence)


def layer_axes(shape: tuple[int, ...], rgb: bool, channel: int | None) -> str:
    """Axis letters of an Image layer's data.

    RGB layers are ``YXS`` (``channel`` picks a colour); other layers are ``YX`` with the leading
    dimensions read as ``Z`` (3-D) or ``TZ`` (4-D), or, when a ``channel`` is chosen, the first
    leading dimension as ``C``.
    """
    ndim = len(shape)
    if rgb:
        lead = ndim - 3
        if lead > 2:
            raise ValueError(f"RGB layer of shape {shape}: at most 2 dimensions before y, x")
        return "TZ"[2 - lead:] + "YXS"
    lead = ndim - 2
    if lead < 0:
        raise ValueError(f"layer of shape {shape} is not an image")
    if channel is not None:
        if lead < 1:
            raise ValueError(f"a 2-D layer of shape {shape} has no channel dimension; set channel to -1")
        if lead > 3:
            raise ValueError(f"layer of shape {shape}: at most C, T, Z before y, x")
        return "C" + "TZ"[3 - lead:] + "YX"
    if lead > 2:
        raise ValueError(f"layer of shape {shape}: at most T, Z before y, x (pick a channel for a C dimension)")
    return "TZ"[2 - lead:] + "YX"


def segment_layer_data(
    data: Any, rgb: bool = False, settings: LayerSettings | None = None, name: str = "image",
) -> tuple[np.ndarray, dict[str, Any], str]:
    """Segment an Image layer's data into a napari ``LayerDataTuple`` for a Labels layer.

    Parameters
    ----------
    data : array-like
        The layer's data (numpy or dask).
    rgb : bool
        Whether the layer is RGB (last dimension is the colour).
    settings : LayerSettings, optional
        Model and settings (default: the ``default`` model with its own settings).
    name : str
        The image layer's name (the labels layer is ``"<name> nuclei"``).

    Returns
    -------
    tuple
        ``(labels, {"name", "features", "metadata"}, "labels")``. Planes of a stack are
        segmented one by one through :meth:`~nucleiseg.inference.segmenter.Segmenter.segment`;
        their ids are offset so that every nucleus of the layer has its own id. ``features``
        holds the measurements (:func:`nucleiseg.io.measure.measure`) with ``index`` = label
        id (napari's key) and, for stacks, the ``plane`` and the per-plane ``label``;
        ``metadata["nucleiseg"]`` records the model and every setting in force.
    """
    from nucleiseg.api import _cached_segmenter
    from nucleiseg.inference.stack import segment_planes, stack_measurements
    from nucleiseg.io.stacks import resolve_planes

    settings = settings or LayerSettings()
    array = np.asarray(data)
    axes = layer_axes(array.shape, rgb, settings.channel)
    planes = resolve_planes(array, axes, settings.channel)
    segmenter = _cached_segmenter(str(settings.model))
    infer, post = settings.settings_for(segmenter)
    result = segment_planes(segmenter, planes, infer, post)
    table = stack_measurements(result, planes)
    flat = np.stack([r.labels for r in result.planes]).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum([int(r.labels.max(initial=0)) for r in result.planes])[:-1]])
    flat = np.where(flat > 0, flat + offsets[:, None, None], 0)
    table.insert(0, "index", table["label"].to_numpy() + offsets[table["plane"].to_numpy()])
    if not planes.is_stack:
        table = table.drop(columns=["plane"])
    labels = flat.reshape(result.labels.shape)
    dtype = np.int32 if labels.max(initial=0) <= np.iinfo(np.int32).max else np.int64
    record = {
        "model": segmenter.name, "model_hash": segmenter.model_hash, "backend": segmenter.backend,
        "count": result.count, "axes": result.axes, "channel": planes.channel, "tta": bool(settings.tta),
        "threshold": post.threshold, "min_size": post.min_size, "min_confidence": post.min_confidence,
        "diameter": settings.diameter, "pixel_size": settings.pixel_size,
        "diameters": [None if r.diameter is None else round(float(r.diameter), 2) for r in result.planes],
    }
    meta = {"name": f"{name} nuclei", "features": pd.DataFrame(table).reset_index(drop=True),
            "metadata": {"nucleiseg": record}}
    return labels.astype(dtype), meta, "labels"
