"""Would an ensemble help? Average the probabilities of several models and score four suite sets.

A measurement for an ``--ensemble`` accuracy mode (issue 15), not a shipped feature: the first
model's configuration (normalisation, thresholds, size model) is used with a predictor that
averages every model's probabilities (PyTorch backend), then the accuracy suite's DSB
validation split, its x0.5 zoom, the 40 held-out BBBC039 images and the 14 MoNuSeg test images
are scored with the competition metric. Each model alone is the first row::

    python benchmarks/ensemble_probe.py default runs/default_v3    # results/ensemble_probe.json
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from nucleiseg.benchmark.suite_sets import prepare_sets
from nucleiseg.inference.segmenter import Segmenter
from nucleiseg.io.images import read_image
from nucleiseg.io.labels import discover_inputs, load_item_gt
from nucleiseg.metrics import competition_score

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
OUT = ROOT / "benchmarks" / "results" / "ensemble_probe.json"

Pairs = Iterator[tuple[np.ndarray, np.ndarray]]


def sets(shared: Path, cache: Path) -> dict[str, Pairs]:
    """Image / ground-truth pairs of the suite's sets (the x0.5 zoom only), read lazily.

    The sets are the accuracy suite's own (:func:`~nucleiseg.benchmark.suite_sets.prepare_sets`,
    the same folders and ground truth ``nucleiseg segment`` and ``nucleiseg evaluate`` see).
    """
    return {
        s.name: ((read_image(item.image_path), load_item_gt(item)) for item in discover_inputs([s.inputs]))
        for s in prepare_sets(shared, cache, zooms={0.5: None}, progress=False)
    }


def averaged(models: list[str]) -> Segmenter:
    """The first model's segmenter with a predictor averaging every model's probabilities."""
    members = [Segmenter.from_pretrained(m, backend="torch") for m in models]
    predictors = [m.predictor for m in members]
    first = members[0]
    return Segmenter(first.config, lambda x: sum(p(x) for p in predictors) / len(predictors),
                     max(m.stride for m in members), "+".join(models), "", first.size_model, "torch")


def score(seg: Segmenter, shared: Path, cache: Path) -> dict[str, dict[str, float]]:
    """Mean competition score and seconds per set."""
    out = {}
    for name, pairs in sets(shared, cache).items():
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
    ap.add_argument("--cache", type=Path, default=ROOT / "out" / "accuracy_suite", help="the accuracy suite's working folder")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    rows = {"first model alone": score(averaged(args.models[:1]), args.shared, args.cache)}
    rows["average of all"] = score(averaged(args.models), args.shared, args.cache)
    result = {"command": "python benchmarks/ensemble_probe.py " + " ".join(args.models), "models": args.models,
              "backend": "torch", "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
