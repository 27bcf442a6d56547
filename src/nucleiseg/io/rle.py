"""Kaggle run-length encoding (DSB 2018 submission format).

Pixels are numbered from 1 in column-major (Fortran) order: down the first column, then down the
second, and so on. A mask is written as space-separated ``start length`` pairs in increasing
order, e.g. a 3x3 mask with its middle column set is ``"4 3"``. A CSV has one row per nucleus
(``ImageId,EncodedPixels``); an image without nuclei has one row with empty ``EncodedPixels``.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nucleiseg.io.atomic import atomic_path

if TYPE_CHECKING:  # imported where used: segmenting never imports pandas
    import pandas as pd

__all__ = [
    "MAX_RLE_PIXELS",
    "labels_to_rles",
    "read_rle_csv",
    "rle_decode",
    "rle_encode",
    "rle_image_ids",
    "rles_to_labels",
    "write_rle_csv",
]


#: Largest image (pixels) a run-length CSV may declare: its label image is allocated before
#: any run is read (the same bound as image files, :data:`nucleiseg.io.images.DEFAULT_MAX_PIXELS`).
MAX_RLE_PIXELS = 400_000_000


def _check_shape(shape: Sequence[int], max_pixels: int = MAX_RLE_PIXELS) -> tuple[int, int]:
    if len(shape) != 2 or any(int(s) != s or int(s) < 1 for s in shape):
        raise ValueError(f"shape must be two positive integers (H, W), got {tuple(shape)}")
    height, width = int(shape[0]), int(shape[1])
    if height * width > max_pixels:
        raise ValueError(f"shape {height} x {width} is {height * width} pixels, more than the limit of {max_pixels}")
    return height, width


def rle_encode(mask: np.ndarray) -> str:
    """Encode a 2-D binary mask (non-zero = foreground) as a Kaggle RLE string.

    Examples
    --------
    >>> import numpy as np
    >>> rle_encode(np.array([[0, 1, 0], [0, 1, 1], [0, 1, 0]]))
    '4 3 8 1'
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    pixels = np.concatenate([[False], mask.ravel(order="F") != 0, [False]])
    edges = np.flatnonzero(pixels[1:] != pixels[:-1]) + 1  # 1-based run starts and ends+1
    starts, ends = edges[0::2], edges[1::2]
    runs = np.empty(2 * starts.size, np.int64)
    runs[0::2], runs[1::2] = starts, ends - starts
    return " ".join(map(str, runs.tolist()))


def _parse_runs(rle: str, npix: int) -> tuple[np.ndarray, np.ndarray]:
    """Parse and validate an RLE string into 0-based starts and lengths."""
    if not isinstance(rle, str):
        raise ValueError(f"RLE must be a string, got {type(rle).__name__}")
    tokens = rle.split()
    if not tokens:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    if len(tokens) % 2:
        raise ValueError(f"RLE has an odd number of values ({len(tokens)}); expected start/length pairs")
    try:
        values = np.array([int(t) for t in tokens], np.int64)
    except ValueError as exc:
        raise ValueError(f"RLE holds a value that is not an integer ({exc})") from None
    starts, lengths = values[0::2], values[1::2]
    if starts.min() < 1:
        raise ValueError(f"RLE start {int(starts.min())} is below 1 (pixels are numbered from 1)")
    if lengths.min() < 1:
        raise ValueError(f"RLE run length {int(lengths.min())} is not positive")
    ends = starts + lengths - 1
    if ends.max() > npix:
        raise ValueError(f"RLE run ends at pixel {int(ends.max())}, beyond the image's {npix} pixels")
    bad = np.flatnonzero(starts[1:] <= ends[:-1])
    if bad.size:
        k = int(bad[0])
        raise ValueError(
            f"RLE runs are unsorted or overlap: run {k + 2} starts at {int(starts[k + 1])}, "
            f"before the previous run ends at {int(ends[k])}"
        )
    return starts - 1, lengths


def _run_indices(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Flat 0-based pixel indices covered by runs (vectorised concatenation of aranges)."""
    if starts.size == 0:
        return np.empty(0, np.int64)
    offsets = np.repeat(starts - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
    return np.arange(int(lengths.sum()), dtype=np.int64) + offsets


def rle_decode(rle: str, shape: Sequence[int]) -> np.ndarray:
    """Decode a Kaggle RLE string into a boolean mask of ``shape`` ``(H, W)``.

    Raises
    ------
    ValueError
        An odd number of values, non-integer values, starts below 1, non-positive lengths,
        runs beyond the image, or unsorted/overlapping runs.
    """
    height, width = _check_shape(shape)
    starts, lengths = _parse_runs(rle, height * width)
    flat = np.zeros(height * width, bool)
    flat[_run_indices(starts, lengths)] = True
    return flat.reshape((height, width), order="F")


def labels_to_rles(labels: np.ndarray) -> list[str]:
    """One RLE string per label id, in increasing id order (0 is background).

    All objects are encoded in one pass: foreground pixels in Fortran order are stably sorted by
    label, then runs are cut wherever the label changes or pixel indices stop being consecutive.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be 2-D, got shape {labels.shape}")
    if labels.dtype.kind not in "biu":
        raise ValueError(f"labels must hold integers, got dtype {labels.dtype}")
    flat = labels.ravel(order="F")
    if flat.dtype == bool:
        flat = flat.view(np.uint8)
    pos = np.flatnonzero(flat)
    if pos.size == 0:
        return []
    lab = flat[pos]
    order = np.argsort(lab, kind="stable")
    pos, lab = pos[order], lab[order]
    cut = np.flatnonzero((np.diff(pos) != 1) | (np.diff(lab) != 0)) + 1
    run_start = np.concatenate([[0], cut])
    run_len = np.diff(np.concatenate([run_start, [pos.size]]))
    starts = pos[run_start] + 1
    run_lab = lab[run_start]
    obj_edges = np.flatnonzero(np.diff(run_lab)) + 1
    pairs = np.empty(2 * starts.size, np.int64)
    pairs[0::2], pairs[1::2] = starts, run_len
    text = [str(v) for v in pairs.tolist()]
    bounds = np.concatenate([[0], obj_edges, [starts.size]]) * 2
    return [" ".join(text[a:b]) for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True)]


def _paint(items: Iterable[tuple[str, str]], shape: tuple[int, int]) -> np.ndarray:
    """Paint ``(context, rle)`` items with ids 1..n into an ``int32`` image; errors name the context."""
    height, width = shape
    flat = np.zeros(height * width, np.int32)
    next_id = 1
    for context, rle in items:
        try:
            idx = _run_indices(*_parse_runs(rle, height * width))
        except ValueError as exc:
            raise ValueError(f"{context}: {exc}") from None
        if idx.size == 0:
            continue
        if flat[idx].any():
            raise ValueError(f"{context}: overlaps an earlier RLE of the same image")
        flat[idx] = next_id
        next_id += 1
    return flat.reshape((height, width), order="F")


def rles_to_labels(rles: Iterable[str], shape: Sequence[int]) -> np.ndarray:
    """Build an ``int32`` label image with ids 1..n for the non-empty RLEs, in order.

    Raises
    ------
    ValueError
        An invalid RLE, or two RLEs that share pixels.
    """
    return _paint(((f"RLE {k}", rle) for k, rle in enumerate(rles, start=1)), _check_shape(shape))


def read_rle_csv(
    path: str | Path, shapes: Mapping[str, Sequence[int]] | None = None, *, unknown: str = "error",
    max_pixels: int = MAX_RLE_PIXELS,
) -> dict[str, np.ndarray]:
    """Read a Kaggle RLE CSV into ``{image id: int32 labels}``.

    Parameters
    ----------
    path : str or Path
        CSV with columns ``ImageId`` and ``EncodedPixels`` and optionally ``Height`` and
        ``Width``; other columns are ignored. Rows with empty ``EncodedPixels`` give images
        without nuclei.
    shapes : mapping, optional
        ``{image id: (H, W)}``; takes precedence over the ``Height``/``Width`` columns.
    unknown : {"error", "skip"}
        An image whose shape neither ``shapes`` nor the columns give: an error, or left out
        (evaluation: predictions without ground truth are not scored anyway).
    max_pixels : int
        Refuse shapes larger than this before allocating their label image.

    Returns
    -------
    dict
        Labels per image id in order of first appearance; ids ``1..n`` in row order.

    Raises
    ------
    ValueError
        Missing columns, an image whose shape is unknown, inconsistent or too large, or an
        invalid RLE (the message names the CSV line).
    """
    path = Path(path)
    if unknown not in ("error", "skip"):
        raise ValueError(f"unknown must be 'error' or 'skip', got {unknown!r}")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    rows, sizes = _group_rows(path, _read_table(path), shapes, unknown)
    out: dict[str, np.ndarray] = {}
    for image_id, items in rows.items():
        shape = tuple(shapes[image_id]) if shapes is not None and image_id in shapes else sizes[image_id]
        out[image_id] = _paint_image(path, image_id, items, shape, max_pixels)
    return out


def _read_table(path: Path) -> pd.DataFrame:
    """The CSV as strings; a one-line error when it cannot be parsed or lacks a required column."""
    import pandas as pd  # only for reading CSVs: segmenting never imports it

    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot parse as CSV ({exc})") from None
    missing = {"ImageId", "EncodedPixels"} - set(df.columns)
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
    return df


def _group_rows(
    path: Path, df: pd.DataFrame, shapes: Mapping[str, Sequence[int]] | None, unknown: str
) -> tuple[dict[str, list[tuple[int, str]]], dict[str, tuple[int, int]]]:
    """``(line, rle)`` rows per image id in order of first appearance, and the shapes the columns give."""
    has_hw = {"Height", "Width"} <= set(df.columns)
    rows: dict[str, list[tuple[int, str]]] = {}
    sizes: dict[str, tuple[int, int]] = {}
    for i, rec in enumerate(df.itertuples(index=False), start=2):  # line 1 is the header
        image_id, rle = str(rec.ImageId).strip(), str(rec.EncodedPixels).strip()
        if not image_id:
            raise ValueError(f"{path}: line {i}: empty ImageId")
        if shapes is None or image_id not in shapes:
            hw = _row_shape(path, i, rec, image_id, has_hw, unknown)
            if hw is None:
                continue
            if sizes.setdefault(image_id, hw) != hw:
                raise ValueError(f"{path}: line {i}: ImageId {image_id} has shape {hw}, earlier {sizes[image_id]}")
        rows.setdefault(image_id, []).append((i, rle))
    return rows, sizes


def _row_shape(path: Path, line: int, rec: Any, image_id: str, has_hw: bool, unknown: str) -> tuple[int, int] | None:
    """A row's ``(Height, Width)``; None for a row without them that ``unknown="skip"`` leaves out."""
    if not has_hw or not str(rec.Height).strip() or not str(rec.Width).strip():
        if unknown == "skip":
            return None
        raise ValueError(
            f"{path}: line {line} (ImageId {image_id}): image shape unknown; "
            "add Height and Width columns or pass shapes={id: (H, W)}"
        )
    try:
        return (int(float(rec.Height)), int(float(rec.Width)))
    except (ValueError, OverflowError):
        raise ValueError(f"{path}: line {line}: Height/Width are not numbers") from None


def _paint_image(
    path: Path, image_id: str, items: list[tuple[int, str]], shape: Sequence[int], max_pixels: int
) -> np.ndarray:
    """The ``int32`` labels of one image from its ``(line, rle)`` rows; errors name the CSV and line."""
    try:
        height, width = _check_shape(shape, max_pixels)
    except ValueError as exc:
        raise ValueError(f"{path}: ImageId {image_id}: {exc}") from None
    contexts = ((f"{path}: line {line} (ImageId {image_id})", rle) for line, rle in items)
    return _paint(contexts, (height, width))


def rle_image_ids(path: str | Path) -> list[str]:
    """The image ids of a run-length CSV (its ``ImageId`` column), in order of first appearance."""
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh, skipinitialspace=True)
        ids = (str(row.get("ImageId") or "").strip() for row in reader)
        return list(dict.fromkeys(i for i in ids if i))


def write_rle_csv(
    path: str | Path, labels_by_id: Mapping[str, np.ndarray], *, include_shape: bool = False
) -> None:
    """Write ``{image id: labels}`` as a Kaggle RLE CSV, atomically.

    Each nucleus becomes one ``ImageId,EncodedPixels`` row (ids in increasing label order); an
    image without nuclei still gets one row with empty ``EncodedPixels``. With
    ``include_shape=True`` the ``Height`` and ``Width`` columns are added so that the file can
    be read back without knowing the image sizes.
    """
    header = ["ImageId", "EncodedPixels"] + (["Height", "Width"] if include_shape else [])
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(header)
            for image_id, labels in labels_by_id.items():
                labels = np.asarray(labels)
                extra = [labels.shape[0], labels.shape[1]] if include_shape else []
                rles = labels_to_rles(labels)
                for rle in rles or [""]:
                    writer.writerow([image_id, rle, *extra])
