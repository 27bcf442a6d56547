"""Per-nucleus measurements, vectorised over the whole label image.

:func:`measure` gives the same numbers as :func:`skimage.measure.regionprops_table` (tested to
1e-9) 4-10 times faster on dense images: area, centroid, bounding box, perimeter, eccentricity and the
intensities are computed for all nuclei at once from pixel counts and moments
(``numpy.bincount``), and the convex hulls behind ``solidity`` come from the first and last
pixel of every row of every nucleus (:func:`_convex_areas`, exact integer arithmetic).
:func:`measure_regionprops` is the straightforward ``regionprops_table`` version, kept as the
reference and as the naive baseline of ``nucleiseg benchmark``.

With a pixel size (µm per pixel), :func:`measure` adds the physical columns
:data:`PHYSICAL_COLUMNS` (``area_um2``, ``perimeter_um``, ``centroid_y_um``, ``centroid_x_um``)
after the pixel columns, which stay as they are.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from skimage.measure import regionprops_table

__all__ = [
    "MEASUREMENT_COLUMNS", "PHYSICAL_COLUMNS", "add_physical_columns", "measure", "measure_in_bands", "measure_regionprops",
]

#: Columns of :func:`measure` (the last two only when an image is given).
MEASUREMENT_COLUMNS = (
    "label", "area", "centroid_y", "centroid_x", "bbox_min_y", "bbox_min_x", "bbox_max_y",
    "bbox_max_x", "perimeter", "eccentricity", "solidity", "mean_intensity", "max_intensity",
)  # fmt: skip
#: Physical columns added with a pixel size: name -> (pixel column, power of the pixel size).
PHYSICAL_COLUMNS = {
    "area_um2": ("area", 2), "perimeter_um": ("perimeter", 1), "centroid_y_um": ("centroid_y", 1),
    "centroid_x_um": ("centroid_x", 1),
}  # fmt: skip
_RENAME = {
    "centroid-0": "centroid_y", "centroid-1": "centroid_x", "bbox-0": "bbox_min_y",
    "bbox-1": "bbox_min_x", "bbox-2": "bbox_max_y", "bbox-3": "bbox_max_x",
    "intensity_mean": "mean_intensity", "intensity_max": "max_intensity",
}  # fmt: skip

# skimage.measure.perimeter (4-connectivity): weight of a border pixel by the code
# 1 * itself + 2 * (border edge neighbours) + 10 * (border corner neighbours).
_PERIMETER_WEIGHTS = np.zeros(50)
_PERIMETER_WEIGHTS[[5, 7, 15, 17, 25, 27]] = 1.0
_PERIMETER_WEIGHTS[[21, 33]] = np.sqrt(2)
_PERIMETER_WEIGHTS[[13, 23]] = (1 + np.sqrt(2)) / 2


def _check(labels: np.ndarray, image: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.dtype.kind not in "biu":
        raise ValueError(f"labels must be a 2-D integer array, got {labels.dtype} of shape {labels.shape}")
    if labels.dtype.kind == "i" and labels.size and labels.min() < 0:
        raise ValueError("labels must be non-negative")
    labels = labels.astype(np.int64) if labels.dtype == bool else labels
    if image is not None:
        image = np.asarray(image)
        if image.shape[:2] != labels.shape or image.ndim not in (2, 3):
            raise ValueError(f"image shape {image.shape} does not match labels shape {labels.shape}")
    return labels, image


def _intensity(image: np.ndarray, pixels: np.ndarray | None = None) -> np.ndarray:
    """float64 intensities (the channel mean of an RGB image): of every pixel, or of the flat indices ``pixels``.

    Taking only the pixels asked for keeps a whole-image float64 copy (8 bytes per pixel) out of memory.
    """
    flat = image.reshape(image.shape[0] * image.shape[1], -1)
    values = flat if pixels is None else flat[pixels]
    return values.astype(np.float64).mean(axis=1)


def _empty(columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=np.float64) for c in columns}).astype({"label": np.int64})


def measure_regionprops(labels: np.ndarray, image: np.ndarray | None = None) -> pd.DataFrame:
    """Per-nucleus measurements with :func:`skimage.measure.regionprops_table` (the reference).

    Same parameters and result as :func:`measure`.
    """
    labels, image = _check(labels, image)
    intensity = None if image is None else _intensity(image).reshape(labels.shape)
    columns = list(MEASUREMENT_COLUMNS if image is not None else MEASUREMENT_COLUMNS[:-2])
    if not labels.any():
        return _empty(columns)
    props = ["label", "area", "centroid", "bbox", "perimeter", "eccentricity", "solidity"]
    props += ["intensity_mean", "intensity_max"] if intensity is not None else []
    table = regionprops_table(labels, intensity_image=intensity, properties=props)
    return pd.DataFrame(table).rename(columns=_RENAME)[columns]


def _perimeters(labels: np.ndarray, fg: np.ndarray, n: int) -> np.ndarray:
    """``skimage.measure.perimeter(labels == k, 4)`` for every k in ``0..n-1`` at once.

    ``fg`` holds the flat indices of the foreground pixels; work is proportional to their number.
    """
    w = labels.shape[1]
    pad = np.pad(labels, 1).ravel()
    p = (fg // w + 1) * (w + 2) + fg % w + 1  # foreground pixels in the padded image
    centre = pad[p]
    edge, corner = (-(w + 2), w + 2, -1, 1), (-(w + 3), -(w + 1), w + 1, w + 3)
    interior = np.ones(p.size, bool)
    for off in edge:
        interior &= pad[p + off] == centre
    border = np.zeros(pad.size, bool)
    border[p[~interior]] = True
    q, centre = p[~interior], centre[~interior]
    code = np.ones(q.size, np.int64)
    for weight, offsets in ((2, edge), (10, corner)):
        for off in offsets:
            code += weight * (border[q + off] & (pad[q + off] == centre))
    return np.bincount(centre, weights=_PERIMETER_WEIGHTS[code], minlength=n)


def _lower_envelope(g: np.ndarray, y: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, ...]:
    """Vertices of the lower convex envelope ``x(y)`` of each group's points.

    Points are sorted by group then strictly increasing ``y``. A point on or above the chord
    of its two neighbours is never a vertex of the envelope, so every such point is dropped at
    once, pass after pass, until each group's chain is strictly convex. Integer arithmetic keeps
    it exact.
    """
    while g.size >= 3:
        same = (g[:-2] == g[1:-1]) & (g[1:-1] == g[2:])
        above = (x[1:-1] - x[:-2]) * (y[2:] - y[:-2]) >= (x[2:] - x[:-2]) * (y[1:-1] - y[:-2])
        drop = same & above
        if not drop.any():
            break
        keep = np.ones(g.size, bool)
        keep[1:-1] = ~drop
        g, y, x = g[keep], y[keep], x[keep]
    return g, y, x


def _convex_areas(
    key: np.ndarray, order: np.ndarray, cols: np.ndarray, height: int, ids: np.ndarray, bbox: np.ndarray
) -> np.ndarray:
    """Pixel counts of ``skimage.morphology.convex_hull_image`` for every nucleus at once.

    scikit-image takes the convex hull of the pixels' edge midpoints (each pixel centre moved
    half a pixel up, down, left and right) and counts the pixel centres inside or on it. The
    hull is also the hull of the first and last pixel of every row, so its left and right
    sides are the convex envelopes of those points' midpoints; the count is, row by row, the
    integers between the two sides. Coordinates are doubled so every number is an integer and
    the count is exact.

    Parameters
    ----------
    key : numpy.ndarray
        ``label * height + row`` of each foreground pixel, in raster order.
    order : numpy.ndarray
        ``numpy.argsort(key, kind="stable")``: by label, then row, columns ascending.
    cols : numpy.ndarray
        Column of each foreground pixel.
    height : int
        Image height.
    ids, bbox : numpy.ndarray
        Labels present (ascending) and their ``(min_row, min_col, max_row, max_col)`` boxes.
    """
    k, c = key[order], cols[order]
    starts = np.flatnonzero(np.r_[True, k[1:] != k[:-1]])
    ends = np.r_[starts[1:], k.size] - 1
    g, r = np.divmod(k[starts], height)
    y2 = 2 * r + 1  # doubled row of the pixel centre, shifted so the half-pixel above is >= 0
    sides = []
    for first, sign in ((c[starts], 1), (c[ends], -1)):  # left side; right side mirrored
        gg = np.repeat(g, 3)
        yy = np.stack([y2, y2 - 1, y2 + 1], axis=1).ravel()
        xx = (sign * np.stack([2 * first - sign, 2 * first, 2 * first], axis=1)).ravel()
        o = np.lexsort((xx, yy, gg))
        gg, yy, xx = gg[o], yy[o], xx[o]
        first_of_row = np.r_[True, (gg[1:] != gg[:-1]) | (yy[1:] != yy[:-1])]  # outermost point per row
        sides.append(_lower_envelope(gg[first_of_row], yy[first_of_row], xx[first_of_row]))
    heights = bbox[:, 2] - bbox[:, 0]
    owner = np.repeat(np.arange(ids.size), heights)
    rows = np.repeat(bbox[:, 0], heights) + np.arange(heights.sum()) - np.repeat(np.cumsum(heights) - heights, heights)
    qg, qy = ids[owner].astype(np.int64), 2 * rows + 1
    span = 2 * height + 3
    bounds = []
    for (eg, ey, ex), sign in zip(sides, (1, -1)):
        i = np.searchsorted(eg * span + ey, qg * span + qy, side="right") - 1
        dy = ey[i + 1] - ey[i]
        num = sign * (ex[i] * dy + (qy - ey[i]) * (ex[i + 1] - ex[i]))  # side at this row = num / (2 dy)
        bounds.append(-((-num) // (2 * dy)) if sign == 1 else num // (2 * dy))  # ceil on the left, floor on the right
    return np.bincount(owner, weights=bounds[1] - bounds[0] + 1, minlength=ids.size)


def add_physical_columns(table: pd.DataFrame, pixel_size: float | None) -> pd.DataFrame:
    """Add :data:`PHYSICAL_COLUMNS` (µm, µm²) to a :func:`measure` table; no pixel size adds nothing.

    Returns the table (changed in place). Raises ValueError for a size that is not positive.
    """
    if pixel_size is None:
        return table
    size = float(pixel_size)
    if not np.isfinite(size) or size <= 0:
        raise ValueError(f"pixel size must be a positive number of micrometres, got {pixel_size!r}")
    for name, (column, power) in PHYSICAL_COLUMNS.items():
        if column in table.columns:
            table[name] = table[column].astype(np.float64) * size**power
    return table


def _boxes(labels: np.ndarray, lab: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels present (ascending), their areas (float64) and ``(min_row, min_col, max_row, max_col)`` boxes."""
    area_all = np.bincount(lab, minlength=n)
    ids = np.flatnonzero(area_all)
    area = area_all[ids].astype(np.float64)
    slices = ndi.find_objects(labels)
    bbox = np.array([[s[0].start, s[1].start, s[0].stop, s[1].stop] for s in (slices[i - 1] for i in ids)], np.int64)
    return ids, area, bbox


def _moments(
    lab: np.ndarray, rows: np.ndarray, cols: np.ndarray, n: int, ids: np.ndarray, area: np.ndarray, bbox: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centroid inside the bbox (row, column) and eccentricity of every nucleus, from pixel moments."""
    lut = np.zeros((n, 2), np.int64)
    lut[ids] = bbox[:, :2]
    r = (rows - lut[lab, 0]).astype(np.float64)  # coordinates inside each bbox keep the sums small
    c = (cols - lut[lab, 1]).astype(np.float64)

    def total(weights: np.ndarray) -> np.ndarray:
        return np.bincount(lab, weights=weights, minlength=n)[ids]

    mean_r, mean_c = total(r) / area, total(c) / area
    var_r = total(r * r) / area - mean_r**2
    var_c = total(c * c) / area - mean_c**2
    cov = total(r * c) / area - mean_r * mean_c
    half_sum, root = (var_r + var_c) / 2, np.sqrt(((var_r - var_c) / 2) ** 2 + cov**2)
    l1, l2 = np.clip(half_sum + root, 0, None), np.clip(half_sum - root, 0, None)
    with np.errstate(divide="ignore", invalid="ignore"):
        eccentricity = np.where(l1 > 0, np.sqrt(np.clip(1 - l2 / l1, 0, None)), 0.0)
    return mean_r, mean_c, eccentricity


def _intensities(
    image: np.ndarray, fg: np.ndarray, lab: np.ndarray, by_label: np.ndarray, n: int, ids: np.ndarray, area: np.ndarray
) -> dict[str, np.ndarray]:
    """``mean_intensity`` and ``max_intensity`` of every nucleus (``by_label`` sorts ``fg`` by label)."""
    values = _intensity(image, fg)
    mean = np.bincount(lab, weights=values, minlength=n)[ids] / area
    first = np.flatnonzero(np.r_[True, np.diff(lab[by_label]) != 0])
    return {"mean_intensity": mean, "max_intensity": np.maximum.reduceat(values[by_label], first)}


def measure(
    labels: np.ndarray, image: np.ndarray | None = None, pixel_size: float | None = None, *, row_offset: int = 0
) -> pd.DataFrame:
    """Per-nucleus measurements, identical to ``regionprops_table`` but vectorised.

    Parameters
    ----------
    labels : numpy.ndarray
        ``(H, W)`` label image.
    image : numpy.ndarray, optional
        Gray or RGB image in its original units; intensities are measured on the channel mean.
    pixel_size : float, optional
        µm per pixel: adds :data:`PHYSICAL_COLUMNS` (:func:`add_physical_columns`).
    row_offset : int
        The labels are rows ``row_offset..`` of a larger image: added to the row coordinates
        (``centroid_y``, ``bbox_min_y``, ``bbox_max_y``), as :func:`measure_in_bands` needs.

    Returns
    -------
    pandas.DataFrame
        One row per label (ascending) with :data:`MEASUREMENT_COLUMNS` (without the intensity
        columns when no image is given), then the physical columns with a pixel size. Areas and
        perimeters are in pixels; bbox max values are exclusive; eccentricity and solidity follow
        scikit-image's definitions.
    """
    labels, image = _check(labels, image)
    columns = list(MEASUREMENT_COLUMNS if image is not None else MEASUREMENT_COLUMNS[:-2])
    if not labels.any():
        return add_physical_columns(_empty(columns), pixel_size)
    flat = labels.ravel()
    fg = np.flatnonzero(flat)
    lab = flat[fg]
    n = int(lab.max()) + 1
    ids, area, bbox = _boxes(labels, lab, n)
    rows, cols = np.divmod(fg, labels.shape[1])
    mean_r, mean_c, eccentricity = _moments(lab, rows, cols, n, ids, area, bbox)
    key = lab.astype(np.int64) * labels.shape[0] + rows
    by_label = np.argsort(key, kind="stable")  # by label, then row; columns stay ascending
    convex = _convex_areas(key, by_label, cols, labels.shape[0], ids, bbox)
    table = {
        "label": ids.astype(np.int64), "area": area, "centroid_y": mean_r + (bbox[:, 0] + row_offset),
        "centroid_x": mean_c + bbox[:, 1], "bbox_min_y": bbox[:, 0] + row_offset, "bbox_min_x": bbox[:, 1],
        "bbox_max_y": bbox[:, 2] + row_offset, "bbox_max_x": bbox[:, 3],
        "perimeter": _perimeters(labels, fg, n)[ids], "eccentricity": eccentricity, "solidity": area / convex,
    }
    if image is not None:
        table.update(_intensities(image, fg, lab, by_label, n, ids, area))
    return add_physical_columns(pd.DataFrame(table)[columns], pixel_size)


def measure_in_bands(
    labels: np.ndarray, image: np.ndarray | None = None, pixel_size: float | None = None, band_pixels: int = 1 << 16
) -> pd.DataFrame:
    """:func:`measure`, computed on row bands of about ``band_pixels`` pixels: the same table.

    :func:`measure` makes several arrays per foreground pixel (about 60 bytes per pixel of a
    dense image). Here the nuclei are taken in groups by their first row; each group is
    measured on the rows from its first nucleus's top to its last nucleus's bottom with the
    other nuclei blanked, so the temporaries are those of one band (a nucleus as tall as the
    image makes its band the whole image).
    """
    labels, image = _check(labels, image)
    height, width = labels.shape
    if labels.size <= band_pixels or not labels.any():
        return measure(labels, image, pixel_size)
    present = [(k + 1, s[0].start, s[0].stop) for k, s in enumerate(ndi.find_objects(labels)) if s is not None]
    ids, tops, bottoms = (np.array(v, np.int64) for v in zip(*present, strict=True))
    del present
    first_row = np.full(int(ids[-1]) + 1, -1, np.int64)  # label -> its top row (-1: background, absent)
    first_row[ids] = tops
    parts = []
    step = max(1, band_pixels // max(width, 1))
    for top in range(0, height, step):
        group = (tops >= top) & (tops < top + step)
        if not group.any():
            continue
        stop = int(bottoms[group].max())
        rows = labels[top:stop]
        starts = first_row[rows]
        mine = np.where((starts >= top) & (starts < top + step), rows, 0)
        del starts
        parts.append(measure(mine, None if image is None else image[top:stop], row_offset=top))
    table = pd.concat(parts, ignore_index=True).sort_values("label", kind="stable").reset_index(drop=True)
    return add_physical_columns(table, pixel_size)
