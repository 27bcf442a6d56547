"""Outputs for people: outline overlays, error overlays, per-nucleus measurements, ImageJ ROIs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import roifile
from skimage.color import hsv2rgb
from skimage.measure import find_contours, regionprops

from nucleiseg.io.atomic import atomic_path
from nucleiseg.io.images import to_uint8_rgb
from nucleiseg.io.measure import MEASUREMENT_COLUMNS, measure, measure_regionprops

__all__ = [
    "DIFF_COLOURS",
    "MEASUREMENT_COLUMNS",
    "difference_overlay",
    "difference_rows",
    "draw_outlines",
    "inner_edges",
    "label_colours",
    "label_rois",
    "legend_strip",
    "measure",
    "measure_regionprops",
    "outline_palette",
    "outline_rows",
    "overlay_outlines",
    "write_measurements",
    "write_rois",
]

def _check_labels(labels: np.ndarray, shape: tuple[int, ...] | None = None, name: str = "labels") -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.dtype.kind not in "biu":
        raise ValueError(f"{name} must be a 2-D integer array, got {labels.dtype} of shape {labels.shape}")
    if shape is not None and labels.shape != tuple(shape[:2]):
        raise ValueError(f"{name} shape {labels.shape} differs from the image shape {tuple(shape[:2])}")
    if labels.dtype.kind == "i" and labels.size and labels.min() < 0:
        raise ValueError(f"{name} must be non-negative")
    return labels.astype(np.int64) if labels.dtype == bool else labels


def label_colours(ids: np.ndarray) -> np.ndarray:
    """Distinct bright ``uint8`` RGB colours, one per entry of ``ids`` (golden-ratio hues)."""
    hue = (np.asarray(ids, np.float64) * 0.618033988749895) % 1.0
    hsv = np.stack([hue, np.full_like(hue, 0.85), np.ones_like(hue)], axis=-1)
    return (hsv2rgb(hsv.reshape(-1, 1, 3)).reshape(-1, 3) * 255 + 0.5).astype(np.uint8)


#: Raw bytes of label rows handled at once while drawing outlines (bounded temporaries).
_OUTLINE_BAND_BYTES = 1 << 20


def outline_rows(labels: np.ndarray) -> int:
    """Rows per band for :func:`draw_outlines` on ``labels`` (at least one)."""
    return max(1, _OUTLINE_BAND_BYTES // max(labels.shape[1] * labels.itemsize, 1))


def inner_edges(labels: np.ndarray, top: int, stop: int) -> np.ndarray:
    """Rows ``top:stop`` of the inner outlines of the nuclei, as a ``bool`` array.

    The same pixels as ``find_boundaries(labels, mode="inner") & (labels > 0)`` (a nucleus pixel
    with a 4-neighbour of another value; the image border is no outline), computed from those
    rows and one row on each side, so its temporaries are the size of the band.
    """
    rows = labels[top:stop]
    edges = np.zeros(rows.shape, bool)
    step = rows[:, 1:] != rows[:, :-1]
    edges[:, 1:] |= step
    edges[:, :-1] |= step
    step = rows[1:] != rows[:-1]
    edges[1:] |= step
    edges[:-1] |= step
    del step
    if top > 0:
        edges[0] |= rows[0] != labels[top - 1]
    if stop < labels.shape[0]:
        edges[-1] |= rows[-1] != labels[stop]
    edges &= rows > 0
    return edges


def outline_palette(labels: np.ndarray, color: Sequence[int] | None = None) -> tuple[np.ndarray | None, np.ndarray]:
    """The outline colours of :func:`overlay_outlines`: ``(ids, colours)``.

    ``ids`` are the labels that have an outline pixel (ascending) and ``colours`` their
    ``uint8`` RGB colours (:func:`label_colours` of their rank); with ``color``, ``ids`` is None
    and ``colours`` that one colour. Computed band by band.
    """
    if color is not None:
        if len(color) != 3:
            raise ValueError(f"color must be (r, g, b), got {color!r}")
        return None, np.clip(np.asarray(color), 0, 255).astype(np.uint8)[None]
    found = []
    step = outline_rows(labels)
    for top in range(0, labels.shape[0], step):
        rows = labels[top : top + step]
        found.append(np.unique(rows[inner_edges(labels, top, top + rows.shape[0])]))
    ids = np.unique(np.concatenate(found)) if found else np.zeros(0, labels.dtype)
    return ids, label_colours(np.arange(1, ids.size + 1))


def draw_outlines(out: np.ndarray, labels: np.ndarray, top: int, palette: tuple[np.ndarray | None, np.ndarray]) -> None:
    """Draw the outlines of label rows ``top:top + len(out)`` on ``out`` (``uint8`` RGB rows), in place."""
    edges = inner_edges(labels, top, top + out.shape[0])
    ids, colours = palette
    if ids is None:
        out[edges] = colours[0]
    else:
        out[edges] = colours[np.searchsorted(ids, labels[top : top + out.shape[0]][edges])]


def overlay_outlines(
    image: np.ndarray, labels: np.ndarray, color: Sequence[int] | None = None
) -> np.ndarray:
    """Draw each nucleus's inner outline on the image.

    Parameters
    ----------
    image : numpy.ndarray
        Gray or RGB image of any dtype (shown with :func:`~nucleiseg.io.images.to_uint8_rgb`).
    labels : numpy.ndarray
        ``(H, W)`` label image.
    color : (r, g, b), optional
        One colour for all outlines; by default every nucleus gets its own colour.

    Returns
    -------
    numpy.ndarray
        ``(H, W, 3)`` ``uint8``. The outlines are found band by band (:func:`inner_edges`).
    """
    out = to_uint8_rgb(image).copy()
    labels = _check_labels(labels, out.shape)
    palette = outline_palette(labels, color)
    step = outline_rows(labels)
    for top in range(0, labels.shape[0], step):
        draw_outlines(out[top : top + step], labels, top, palette)
    return out


#: The difference view's colours: (legend text, RGB, opacity over the gray image; None: drawn solid).
DIFF_COLOURS = (
    ("green: both", (0, 255, 0), 0.25),
    ("blue: predicted only (extra)", (40, 120, 255), 0.65),
    ("red: ground truth only (missed)", (255, 40, 40), 0.65),
    ("yellow: predicted outlines", (255, 230, 0), None),
)


def difference_overlay(image: np.ndarray, true: np.ndarray, pred: np.ndarray, legend: bool = True) -> np.ndarray:
    """Show where a prediction disagrees with the ground truth, on a gray copy of the image.

    Pixels in both are tinted lightly green, pixels only in ``pred`` (false positives) are
    blue, pixels only in ``true`` (false negatives) are red; the predicted outlines are drawn
    in yellow so that merged or split nuclei stay visible (:data:`DIFF_COLOURS`). With
    ``legend``, a strip below the image names the colours (the image rows keep their place).
    """
    gray = to_uint8_rgb(image).astype(np.float32).mean(axis=2)
    true = _check_labels(true, gray.shape, "true")
    pred = _check_labels(pred, gray.shape, "pred")
    out = difference_rows(gray, true, pred, 0)
    return np.concatenate([out, legend_strip(out.shape[1])]) if legend else out


def difference_rows(gray: np.ndarray, true: np.ndarray, pred: np.ndarray, top: int) -> np.ndarray:
    """Rows ``top:top + len(gray)`` of :func:`difference_overlay` (no legend), as ``uint8`` RGB.

    ``gray`` is those rows of the gray copy of the image (``float32``: the mean of the RGB
    channels of :func:`~nucleiseg.io.images.to_uint8_rgb`); ``true`` and ``pred`` are the whole
    label images (the outlines need the rows next to the band). Temporaries are the band's size.
    """
    stop = top + gray.shape[0]
    t, p = true[top:stop] > 0, pred[top:stop] > 0
    out = np.repeat(gray.astype(np.float32, copy=False)[..., None], 3, axis=2)
    for mask, (_, rgb, alpha) in zip((t & p, p & ~t, t & ~p), DIFF_COLOURS):
        out[mask] = (1 - alpha) * out[mask] + alpha * np.asarray(rgb, np.float32)
    out[inner_edges(pred, top, stop)] = DIFF_COLOURS[3][1]
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def legend_strip(width: int, entries: Sequence[tuple[str, Sequence[int], float | None]] = DIFF_COLOURS) -> np.ndarray:
    """A dark ``(h, width, 3)`` strip with a colour swatch and its text per entry, wrapped to rows.

    Swatches show each colour as it looks over mid-gray (its opacity applied).
    """
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=12)
    pad, swatch, row_h = 4, 10, 16
    rows: list[list[tuple[str, tuple[int, ...], int]]] = [[]]
    x = pad
    for text, rgb, alpha in entries:
        shown = tuple(int(round(128 * (1 - alpha) + c * alpha)) if alpha else int(c) for c in rgb)
        item_w = swatch + 4 + int(font.getlength(text)) + 12
        if rows[-1] and x + item_w > width:
            rows.append([])
            x = pad
        rows[-1].append((text, shown, x))
        x += item_w
    canvas = Image.new("RGB", (max(width, 1), len(rows) * row_h + pad), (24, 24, 24))
    draw = ImageDraw.Draw(canvas)
    for r, row in enumerate(rows):
        top = pad // 2 + r * row_h
        for text, shown, left in row:
            draw.rectangle([left, top + 3, left + swatch, top + 3 + swatch], fill=shown)
            draw.text((left + swatch + 4, top + 1), text, fill=(235, 235, 235), font=font)
    return np.asarray(canvas, dtype=np.uint8)


def write_measurements(path: str | Path, df: pd.DataFrame) -> None:
    """Write a measurements table as CSV (no index column), atomically."""
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"expected a pandas DataFrame, got {type(df).__name__}")
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def write_rois(path: str | Path, labels: np.ndarray) -> int:
    """Write one ImageJ polygon ROI per nucleus to a ``.zip`` that ImageJ/Fiji's ROI manager opens.

    Each ROI follows the outer contour (``find_contours`` at level 0.5, sub-pixel coordinates in
    ImageJ's pixel-corner convention) of the nucleus's largest piece and is named by its label,
    zero-padded to four digits. An image without nuclei gives an empty zip.

    Returns
    -------
    int
        Number of ROIs written.
    """
    path = Path(path)
    if path.suffix.lower() != ".zip":
        raise ValueError(f"{path}: ImageJ ROI sets are written as .zip")
    rois = label_rois(labels)
    with atomic_path(path) as tmp:
        roifile.roiwrite(tmp, rois, mode="w")
    return len(rois)


def label_rois(labels: np.ndarray, position: int = 0, prefix: str = "") -> list[roifile.ImagejRoi]:
    """One ImageJ polygon ROI per nucleus (see :func:`write_rois`).

    Parameters
    ----------
    labels : numpy.ndarray
        ``(H, W)`` label image.
    position : int
        ImageJ stack position (1-based slice) of the ROIs; 0 = none (all slices).
    prefix : str
        Put before each ROI's name (e.g. the plane of a stack).
    """
    labels = _check_labels(labels)
    rois = []
    for region in regionprops(labels):
        y0, x0 = region.bbox[0], region.bbox[1]
        mask = np.pad(region.image, 1).astype(np.float32)
        contour = max(find_contours(mask, 0.5), key=len)[:-1]  # closed: last point repeats the first
        xy = np.stack([contour[:, 1] + x0 - 0.5, contour[:, 0] + y0 - 0.5], axis=1)
        roi = roifile.ImagejRoi.frompoints(xy, name=f"{prefix}{region.label:04d}")
        roi.roitype = roifile.ROI_TYPE.POLYGON
        roi.position = int(position)
        rois.append(roi)
    return rois
