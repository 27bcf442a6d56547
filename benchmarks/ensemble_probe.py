"""Would an ensemble help? Average the probabilities of several models and score four suite sets.

A measurement for an ``--ensemble`` accuracy mode (issue 15), not a shipped feature: the first
model's configuration (normalisation, thresholds, size model) is used with a predictor that
averages every model's probabilities (PyTorch backend), then the DSB validation split, its x0.5
zoom (the accuracy suite's cached set), the 40 held-out BBBC039 images and the 14 MoNuSeg test
images are scored with the competition metric. Each model alone is the first row::

    python benchmarks/ensemble_probe.py default runs/default_v3    # results/ensemble_probe.json

The x0.5 set comes from ``out/accuracy_suite/val_x0.5`` (``python benchmarks/accuracy_suite.py``
writes it).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from nucleiseg.benchmark.suite_sets import validation_split_ids
from nucleiseg.inference.segmenter import Segmenter
from nucleiseg.io.dsb import load_sample
from nucleiseg.io.images import read_image, read_labels
from nucleiseg.io.splits import bbbc039_heldout
from nucleiseg.metrics import competition_score

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
OUT = ROOT / "benchmarks" / "results" / "ensemble_probe.json"

Pairs = Iterator[tuple[np.ndarray, np.ndarray]]


def sets(shared: Path, zoom_cache: Path) -> dict[str, Pairs]:
    """Image / ground-truth pairs of the four sets, read lazily."""
    dsb = shared / "dsb2018" / "stage1_train"
    bbbc = shared / "external" / "bbbc039"
    monuseg = shared / "external" / "monuseg_test"
    return {
        "validation": ((s.image, s.labels) for s in (load_sample(dsb / i) for i in validation_split_ids())),
        "val_x0.5": ((read_image(p), read_labels(zoom_cache / "masks" / f"{p.stem}.tif"))
                     for p in sorted((zoom_cache / "images").glob("*.png"))),
        "bbbc039_heldout": ((read_image(bbbc / "images" / f"{i}.tif"), read_labels(bbbc / "masks" / f"{i}.tif"))
                            for i in bbbc039_heldout()),
        "monuseg_test": ((read_image(p), read_labels(monuseg / "masks" / p.name)) for p in sorted((monuseg / "images").glob("*.tif"))),
    }


def averaged(models: list[str]) -> Segmenter:
    """The first model's segmenter with a predictor averaging every model's probabilities."""
    members = [Segmenter.from_pretrained(m, backend="torch") for m in models]
    predictors = [m.predictor for m in members]
    first = members[0]
    return Segmenter(first.config, lambda x: sum(p(x) for p in predictors) / len(predictors),
                     max(m.stride for m in members), "+".join(models), "", first.size_model, "torch")


def score(seg: Segmenter, shared: Path, zoom_cache: Path) -> dict[str, dict[str, float]]:
    """Mean competition score and seconds per set."""
    out = {}
    for name, pairs in sets(shared, zoom_cache).items():
        t0, scores = time.perf_counter(), []
        for image, truth in pairs:
            scores.append(competition_score(truth, seg.segment(image, keep_probabilities=False).labels))
        out[name] = {"images": len(scores), "score": round(float(np.mean(scores)), 4), "seconds": round(time.perf_counter() - t0, 1)}
        print(name, out[name], flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", nargs="+", help="bundled names or run folders (the first one's thresholds are used)")
    ap.add_argument("--shared", type=Path, default=SHARED)
    ap.add_argument("--zoom-cache", type=Path, default=ROOT / "out" / "accuracy_suite" / "val_x0.5")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    rows = {"first model alone": score(averaged(args.models[:1]), args.shared, args.zoom_cache)}
    rows["average of all"] = score(averaged(args.models), args.shared, args.zoom_cache)
    result = {"command": "python benchmarks/ensemble_probe.py " + " ".join(args.models), "models": args.models,
              "backend": "torch", "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
