"""QuPath-native GeoJSON: one detection object per nucleus, with its measurements.

QuPath imports the file when it is dragged onto an open image (or with *File > Import objects
from file*): every feature becomes a detection whose measurement list holds the nucleus's
measurements (the columns of :func:`nucleiseg.io.measure.measure`). Coordinates are full-resolution
pixel coordinates ``(x, y)`` in QuPath's (and ImageJ's) convention that pixel ``(row, col)``
covers ``[col, col + 1) x [row, row + 1)``. Outlines are the marching-squares contours at 0.5 of
each nucleus mask (:func:`skimage.measure.find_contours`), the same outlines as the ImageJ ROI
zip. A nucleus in several separate pieces becomes a ``MultiPolygon``; holes are not kept
(post-processing fills them).

With a pixel size, the physical columns of the measurements (:data:`nucleiseg.io.measure.PHYSICAL_COLUMNS`)
go in under QuPath's own measurement names (:data:`QUPATH_NAMES`: ``"Nucleus: Area µm^2"``,
``"Nucleus: Perimeter µm"``, ``"Centroid X µm"``, ``"Centroid Y µm"``), so QuPath lists them
beside its own detections' measurements; coordinates stay in pixels, as QuPath expects.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from skimage.measure import find_contours, regionprops

from nucleiseg.io.atomic import atomic_write_text

__all__ = ["QUPATH_NAMES", "nucleus_polygons", "to_feature_collection", "write_geojson"]

#: QuPath's names of the physical measurement columns (µm is written with U+00B5, as QuPath does).
QUPATH_NAMES = {
    "area_um2": "Nucleus: Area \u00b5m^2", "perimeter_um": "Nucleus: Perimeter \u00b5m",
    "centroid_x_um": "Centroid X \u00b5m", "centroid_y_um": "Centroid Y \u00b5m",
}  # fmt: skip


def _ring(piece: np.ndarray, y0: int, x0: int) -> list[list[float]]:
    """Closed exterior ring ``[[x, y], ...]`` of one 4-connected piece, in pixel-corner coordinates."""
    mask = np.pad(ndi.binary_fill_holes(piece), 1).astype(np.float32)
    contour = max(find_contours(mask, 0.5), key=len)
    # padded (row, col) -> pixel-corner (x, y): subtract the pad, then add half a pixel
    xy = np.stack([contour[:, 1] + x0 - 0.5, contour[:, 0] + y0 - 0.5], axis=1)
    if not np.array_equal(xy[0], xy[-1]):
        xy = np.vstack([xy, xy[:1]])
    return np.round(xy, 3).tolist()


def nucleus_polygons(labels: np.ndarray) -> Iterator[tuple[int, list[list[list[list[float]]]]]]:
    """Yield ``(label, polygons)`` per nucleus; each polygon is ``[exterior ring]``.

    Parameters
    ----------
    labels : ndarray
        ``(H, W)`` non-negative integer labels.

    Yields
    ------
    tuple
        The label id and a list of polygons (one per 4-connected piece, largest first), each a
        list holding its closed exterior ring of ``[x, y]`` points.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.dtype.kind not in "iu":
        raise ValueError(f"labels must be a 2-D integer array, got {labels.dtype} of shape {labels.shape}")
    for region in regionprops(labels):
        y0, x0 = region.bbox[0], region.bbox[1]
        pieces, n = ndi.label(region.image)
        sizes = np.bincount(pieces.ravel())[1:]
        order = np.argsort(-sizes, kind="stable") + 1
        yield int(region.label), [[_ring(pieces == k, y0, x0)] for k in order[:n]]


def _number(value: Any) -> float | int | None:
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, (np.integer, int)):
        return int(value)
    value = float(value)
    return value if np.isfinite(value) else None


def to_feature_collection(
    labels: np.ndarray, measurements: pd.DataFrame | None = None, plane: dict[str, int] | None = None
) -> dict[str, Any]:
    """A GeoJSON ``FeatureCollection`` of QuPath detections, one per nucleus.

    Parameters
    ----------
    labels : ndarray
        ``(H, W)`` labels.
    measurements : DataFrame, optional
        One row per nucleus with a ``label`` column (:func:`nucleiseg.io.measure.measure`);
        every column goes into ``properties.measurements``, the physical ones under their
        QuPath names (:data:`QUPATH_NAMES`).
    plane : dict, optional
        QuPath image plane ``{"c": -1, "z": z, "t": t}`` of a stack plane, written into each
        geometry (QuPath's own key for objects off the first plane).

    Returns
    -------
    dict
        ``{"type": "FeatureCollection", "features": [...]}``; each feature has
        ``properties = {"objectType": "detection", "name": "<label>", "measurements": {...}}``.
    """
    rows: dict[int, dict[str, Any]] = {}
    if measurements is not None and len(measurements):
        if "label" not in measurements.columns:
            raise ValueError("measurements need a 'label' column")
        for row in measurements.to_dict(orient="records"):
            rows[int(row["label"])] = {QUPATH_NAMES.get(str(k), str(k)): _number(v) for k, v in row.items()}
    features = []
    for label, polygons in nucleus_polygons(labels):
        if len(polygons) == 1:
            geometry: dict[str, Any] = {"type": "Polygon", "coordinates": polygons[0]}
        else:
            geometry = {"type": "MultiPolygon", "coordinates": polygons}
        if plane is not None:
            geometry["plane"] = dict(plane)
        properties: dict[str, Any] = {"objectType": "detection", "name": str(label), "isLocked": False}
        properties["measurements"] = rows.get(label, {"label": label})
        features.append({"type": "Feature", "id": f"nucleus-{label}", "geometry": geometry, "properties": properties})
    return {"type": "FeatureCollection", "features": features}


def write_geojson(
    path: str | Path,
    labels: np.ndarray,
    measurements: pd.DataFrame | None = None,
    planes: list[dict[str, int]] | None = None,
) -> int:
    """Write :func:`to_feature_collection` of a label image (or a label stack) atomically.

    Parameters
    ----------
    path : str or Path
        Target ``.geojson`` file.
    labels : ndarray
        ``(H, W)`` labels, or ``(P, H, W)`` planes of a stack; with planes, ``measurements``
        needs a ``plane`` column (0..P-1).
    measurements : DataFrame, optional
        Per-nucleus rows (a ``plane`` column for stacks).
    planes : list of dict, optional
        QuPath plane ``{"c": -1, "z": z, "t": t}`` of each of the P planes (default ``z = p``).

    Returns
    -------
    int
        Number of features written.
    """
    labels = np.asarray(labels)
    if labels.ndim == 2:
        collection = to_feature_collection(labels, measurements)
    elif labels.ndim == 3:
        planes = planes or [{"c": -1, "z": p, "t": 0} for p in range(len(labels))]
        if len(planes) != len(labels):
            raise ValueError(f"{len(planes)} planes given for {len(labels)} label planes")
        features = []
        for p, plane_labels in enumerate(labels):
            table = None
            if measurements is not None:
                if "plane" not in measurements.columns:
                    raise ValueError("measurements of a stack need a 'plane' column")
                table = measurements[measurements["plane"] == p]
            part = to_feature_collection(plane_labels, table, planes[p])
            for f in part["features"]:
                f["id"] = f"plane-{p}-{f['id']}"
            features.extend(part["features"])
        collection = {"type": "FeatureCollection", "features": features}
    else:
        raise ValueError(f"labels must be (H, W) or (P, H, W), got shape {labels.shape}")
    atomic_write_text(path, json.dumps(collection, separators=(",", ":")))
    return len(collection["features"])
