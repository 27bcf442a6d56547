"""The napari widget's work, without napari or Qt: an Image layer's data to a Labels layer tuple."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd

from nucleiseg.bundle import CLASSICAL, list_bundled

__all__ = ["layer_axes", "model_names", "segment_layer_data"]


def model_names() -> list[str]:
    """Bundled model names, then ``"classical"`` (the widget's choices)."""
    return list_bundled() + [CLASSICAL]


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
    data: Any,
    rgb: bool = False,
    model: str = "default",
    tta: bool = False,
    diameter: float = 0.0,
    channel: int = -1,
    name: str = "image",
) -> tuple[np.ndarray, dict[str, Any], str]:
    """Segment an Image layer's data into a napari ``LayerDataTuple`` for a Labels layer.

    Parameters
    ----------
    data : array-like
        The layer's data (numpy or dask).
    rgb : bool
        Whether the layer is RGB (last dimension is the colour).
    model : str
        Bundled model name, run folder or ``"classical"``.
    tta : bool
        Average the 8 flips/rotations.
    diameter : float
        Nucleus diameter in pixels; 0 estimates it.
    channel : int
        Nuclear channel (RGB colour, or index along the first dimension); -1 keeps all.
    name : str
        The image layer's name (the labels layer is ``"<name> nuclei"``).

    Returns
    -------
    tuple
        ``(labels, {"name", "features", "metadata"}, "labels")``. Planes of a stack are
        segmented one by one through :meth:`~nucleiseg.inference.segmenter.Segmenter.segment`;
        their ids are offset so that every nucleus of the layer has its own id. ``features``
        holds the measurements (:func:`nucleiseg.io.measure.measure`) with ``index`` = label
        id (napari's key) and, for stacks, the ``plane`` and the per-plane ``label``.
    """
    from nucleiseg.api import _cached_segmenter
    from nucleiseg.inference.stack import segment_planes, stack_measurements
    from nucleiseg.io.stacks import resolve_planes

    array = np.asarray(data)
    pick = None if channel is None or channel < 0 else int(channel)
    axes = layer_axes(array.shape, rgb, pick)
    planes = resolve_planes(array, axes, pick)
    segmenter = _cached_segmenter(str(model))
    infer = replace(segmenter.config.infer, tta=bool(tta), diameter=float(diameter) if diameter and diameter > 0 else None)
    result = segment_planes(segmenter, planes, infer)
    table = stack_measurements(result, planes)
    flat = np.stack([r.labels for r in result.planes]).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum([int(r.labels.max(initial=0)) for r in result.planes])[:-1]])
    flat = np.where(flat > 0, flat + offsets[:, None, None], 0)
    table.insert(0, "index", table["label"].to_numpy() + offsets[table["plane"].to_numpy()])
    if not planes.is_stack:
        table = table.drop(columns=["plane"])
    labels = flat.reshape(result.labels.shape)
    dtype = np.int32 if labels.max(initial=0) <= np.iinfo(np.int32).max else np.int64
    meta = {
        "name": f"{name} nuclei",
        "features": pd.DataFrame(table).reset_index(drop=True),
        "metadata": {
            "nucleiseg": {
                "model": segmenter.name, "model_hash": segmenter.model_hash, "count": result.count,
                "axes": result.axes, "channel": planes.channel, "tta": bool(tta),
                "diameters": [None if r.diameter is None else round(float(r.diameter), 2) for r in result.planes],
            }
        },
    }
    return labels.astype(dtype), meta, "labels"
