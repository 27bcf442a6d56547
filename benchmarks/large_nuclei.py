"""Large nuclei: the zoom clamp (``InferConfig.min_zoom``) on validation images enlarged x4 .. x12.

Nuclei of more than ~36 px are shrunk to the training size (~18 px) before segmenting; the zoom
is clamped to ``min_zoom .. max_zoom``. With ``min_zoom`` 1/4 (before), nuclei above ~150 px
stay more than twice the training size and the network shatters them. This script segments a
fixed sample of 12 DSB validation images (the accuracy suite's x4 sample, seed 2018) enlarged
x4, x6, x8 and x12 (median nuclei 57 to 172 px; images up to 12,288 px) with
``Segmenter.segment`` as ``nucleiseg segment`` runs it, once per ``min_zoom`` value, and scores
them with the competition metric::

    python benchmarks/large_nuclei.py                     # results/large_nuclei.json
    python benchmarks/large_nuclei.py --zooms 4 6         # fewer rows

The zoomed images are written once (nearest-neighbour ground truth) under ``--cache``, shared
with the accuracy suite's x4 row. Thresholds are the model's (chosen on the native validation
split); these images are the validation split, so this is a check, not a held-out figure.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def run(model: str, zooms: list[float], min_zooms: list[float], shared: Path, cache: Path) -> dict:
    """Scores per zoom row and ``min_zoom`` value, with every image's estimate and zoom used."""
    from nucleiseg.benchmark.suite_sets import prepare_sets
    from nucleiseg.inference.segmenter import Segmenter
    from nucleiseg.io.images import read_image
    from nucleiseg.metrics import competition_score
    from nucleiseg.postprocess import estimate_diameter

    seg = Segmenter.from_pretrained(model)
    sets = [s for s in prepare_sets(shared, cache, {z: 12 for z in zooms}) if s.group == "zoom"]
    rows = []
    for s in sets:
        per: dict[float, list[dict]] = {m: [] for m in min_zooms}
        seconds = dict.fromkeys(min_zooms, 0.0)
        for i in s.ids:  # each (large) image is read once and segmented with every min_zoom
            image, truth = read_image(s.inputs / f"{i}.png"), read_image(s.truth / f"{i}.tif")
            true = round(float(estimate_diameter(truth)), 1)
            for min_zoom in min_zooms:
                t = time.perf_counter()
                result = seg.segment(image, replace(seg.config.infer, min_zoom=min_zoom), keep_probabilities=False)
                seconds[min_zoom] += time.perf_counter() - t
                per[min_zoom].append({
                    "id": i, "true_diameter": true,
                    "estimate": None if result.diameter is None else round(float(result.diameter), 1),
                    "zoom_used": round(result.scale, 4), "score": round(float(competition_score(truth, result.labels)), 4),
                })
        for min_zoom in min_zooms:
            row = {"set": s.name, "zoom": s.zoom, "min_zoom": min_zoom, "images": len(per[min_zoom]),
                   "score": round(float(np.mean([p["score"] for p in per[min_zoom]])), 4),
                   "segment_seconds": round(seconds[min_zoom], 1), "per_image": per[min_zoom]}
            print(f"{s.name} min_zoom {min_zoom:g}: {row['score']:.4f} ({row['segment_seconds']} s)", file=sys.stderr, flush=True)
            rows.append(row)
    return {"model": model, "rows": rows}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--zooms", type=float, nargs="+", default=[4.0, 6.0, 8.0, 12.0])
    ap.add_argument("--min-zooms", type=float, nargs="+", default=[0.25, 0.125], help="InferConfig.min_zoom values compared")
    ap.add_argument("--shared", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--cache", default=str(ROOT / "out" / "accuracy_suite"), help="zoomed copies (shared with the accuracy suite)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "large_nuclei.json"))
    args = ap.parse_args()
    shown = [a for a, prev in zip(sys.argv[1:], [""] + sys.argv[1:]) if a != "--out" and prev != "--out"]  # no local paths
    result = {"command": " ".join(["python benchmarks/large_nuclei.py", *shown]),
              **run(args.model, args.zooms, args.min_zooms, Path(args.shared), Path(args.cache))}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    for row in result["rows"]:
        print(f"{row['set']:10s} min_zoom {row['min_zoom']:<6g} {row['score']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
