"""Exploratory survey of a dataset: sizes, colour modes, nuclei counts and diameters, problems."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from nucleiseg.io.atomic import atomic_path, atomic_write_text
from nucleiseg.io.dsb import is_dsb_root, is_dsb_sample, list_samples, load_sample
from nucleiseg.io.images import read_image, to_uint8_rgb
from nucleiseg.io.labels import discover_inputs, load_item_gt


def colour_mode(image: np.ndarray) -> str:
    """``gray``, ``rgb-gray`` (three equal channels) or ``rgb``."""
    if image.ndim == 2:
        return "gray"
    rgb = image[..., :3]
    if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
        return "rgb-gray"
    return "rgb"


def _records(path: Path, progress: bool):
    """Yield ``(id, image, labels or None, problems)`` for every image under ``path``."""
    if is_dsb_root(path) or is_dsb_sample(path):
        dirs = [path] if is_dsb_sample(path) else list_samples(path)
        for d in tqdm(dirs, desc="inspect", disable=not progress):
            sample = load_sample(d)
            yield sample.id, sample.image, sample.labels, sample.problems
        return
    for item in tqdm(discover_inputs([path]), desc="inspect", disable=not progress):
        labels = load_item_gt(item) if item.gt_path is not None else None
        yield item.id, read_image(item.image_path), labels, []


def survey(path: str | Path, progress: bool = True, max_grid: int = 12) -> tuple[pd.DataFrame, dict[str, Any], list]:
    """Per-image statistics of a dataset folder.

    Returns
    -------
    table : DataFrame
        One row per image: id, height, width, dtype, mode, nuclei, median diameter, problems.
    summary : dict
        Dataset totals and distributions.
    grid : list
        Up to ``max_grid`` ``(id, image, labels)`` examples of distinct sizes/modes for the figure.
    """
    from skimage.measure import regionprops_table

    rows, grid, diameters, seen = [], [], [], set()
    for image_id, image, labels, problems in _records(Path(path), progress):
        row: dict[str, Any] = {
            "id": image_id, "height": image.shape[0], "width": image.shape[1],
            "dtype": str(image.dtype), "mode": colour_mode(image), "nuclei": None,
            "median_diameter": None, "problems": "; ".join(problems),
        }
        if labels is not None:
            props = regionprops_table(labels, properties=("equivalent_diameter_area",))
            d = np.asarray(props["equivalent_diameter_area"])
            diameters.append(d)
            row["nuclei"] = len(d)
            row["median_diameter"] = float(np.median(d)) if len(d) else None
        rows.append(row)
        kind = (row["mode"], image.shape[:2])
        if kind not in seen and len(grid) < max_grid:
            seen.add(kind)
            grid.append((image_id, image, labels))
    table = pd.DataFrame(rows)
    all_d = np.concatenate(diameters) if diameters else np.zeros(0)
    counts = table["nuclei"].dropna().astype(int) if len(table) else pd.Series(dtype=int)
    summary = {
        "images": len(table),
        "nuclei": int(counts.sum()),
        "sizes": {f"{h}x{w}": int(n) for (h, w), n in table.groupby(["height", "width"]).size().items()} if len(table) else {},
        "modes": table["mode"].value_counts().to_dict() if len(table) else {},
        "nuclei_per_image": _describe(counts.to_numpy()),
        "diameter": _describe(all_d),
        "images_with_problems": int((table["problems"] != "").sum()) if len(table) else 0,
    }
    return table, summary, grid


def _describe(values: np.ndarray) -> dict[str, float]:
    if len(values) == 0:
        return {}
    q = np.percentile(values, [0, 5, 25, 50, 75, 95, 100])
    return dict(zip(["min", "p5", "p25", "median", "p75", "p95", "max"], (round(float(v), 2) for v in q), strict=True))


def write_grid(path: str | Path, grid: list) -> None:
    """Save a PNG grid of sample images with their nuclei outlined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nucleiseg.io.outputs import overlay_outlines

    n = max(len(grid), 1)
    cols = min(4, n)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 4 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (image_id, image, labels) in zip(axes.ravel(), grid):
        rgb = to_uint8_rgb(image)
        ax.imshow(overlay_outlines(rgb, labels) if labels is not None else rgb)
        count = "" if labels is None else f", {int(len(np.unique(labels)) - 1)} nuclei"
        ax.set_title(f"{image_id[:12]} {image.shape[1]}x{image.shape[0]}{count}", fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)


def write_report(out_dir: str | Path, table: pd.DataFrame, summary: dict[str, Any], grid: list) -> None:
    """Write ``images.csv``, ``summary.json`` and ``samples.png`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "images.csv", table.to_csv(index=False))
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    write_grid(out / "samples.png", grid)
