"""Time :func:`nucleiseg.metrics.evaluate_pairs` on the ground truth of every DSB training image.

Two passes are timed: ground truth against itself, and against a perturbed copy (every label
shifted by 2 rows and 1 column, every 7th nucleus removed), which exercises partial overlaps.
Loading the masks is not timed. Writes ``benchmarks/results/metric_speed.json``.

Usage::

    python benchmarks/metric_speed.py [--data PATH] [--limit N] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from nucleiseg.io.atomic import atomic_write_text
from nucleiseg.metrics import evaluate_pairs

REPO = Path(__file__).resolve().parents[1]


def load_labels(sample_dir: Path) -> np.ndarray:
    """Label image of one DSB sample from its per-nucleus masks (overlaps go to the first mask)."""
    labels: np.ndarray | None = None
    for k, path in enumerate(sorted((sample_dir / "masks").glob("*.png")), start=1):
        mask = np.asarray(Image.open(path))
        mask = (mask[..., 0] if mask.ndim == 3 else mask) > 0
        if labels is None:
            labels = np.zeros(mask.shape, np.int32)
        labels[mask & (labels == 0)] = k
    if labels is None:
        raise ValueError(f"{sample_dir}: no masks")
    return labels


def perturb(labels: np.ndarray) -> np.ndarray:
    """Shift by (2, 1) pixels (no wrap-around) and drop every 7th id."""
    out = np.zeros_like(labels)
    out[2:, 1:] = labels[:-2, :-1]
    out[(out % 7) == 0] = 0
    return out


def main() -> None:
    """Parse arguments, load ground truth, time both evaluation passes, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "dsb2018" / "stage1_train")
    parser.add_argument("--limit", type=int, default=None, help="only the first N images")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "metric_speed.json")
    args = parser.parse_args()
    dirs = sorted(p for p in args.data.iterdir() if (p / "masks").is_dir())[: args.limit]
    if not dirs:
        raise SystemExit(f"no DSB samples under {args.data}")

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=4) as pool:
        gts = list(pool.map(load_labels, dirs))
    load_s = time.perf_counter() - t0
    preds = [perturb(g) for g in gts]
    ids = [d.name for d in dirs]

    runs = {}
    for name, others in (("identity", gts), ("perturbed", preds)):
        t0 = time.perf_counter()
        report = evaluate_pairs(zip(ids, gts, others, strict=True))
        seconds = time.perf_counter() - t0
        runs[name] = {
            "seconds": round(seconds, 3),
            "images_per_second": round(len(ids) / seconds, 1),
            "score_macro": round(report.summary["score_macro"], 4),
            "score_micro": round(report.summary["score_micro"], 4),
        }
    result = {
        "n_images": len(ids),
        "seconds": runs["perturbed"]["seconds"],
        "images_per_second": runs["perturbed"]["images_per_second"],
        "timed_case": "perturbed",
        "runs": runs,
        "n_nuclei": int(sum(np.count_nonzero(np.bincount(g.ravel())[1:]) for g in gts)),
        "n_pixels": int(sum(g.size for g in gts)),
        "load_seconds_untimed": round(load_s, 1),
    }
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
