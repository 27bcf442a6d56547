"""Issue 14: which zooms should the size probe look at? Accuracy against network pixels.

The probe (:mod:`nucleiseg.inference.size`) looks at an image at zoom 1 and at a few coarser
zooms. At 256 x 256 the coarse views are what the estimate costs (the zoom-1 pass of a small
image is reused as its segmentation), and the 1/2 view alone is a quarter of the image's
pixels. This script measures every zoom set on the *same* samples, with the shipped fitting
procedure (:mod:`nucleiseg.inference.size_fit`: the MLP, the out-of-fold log offset, the gate
chosen on the validation samples):

* the model's probe statistics are collected once at the union of all candidate zooms (views
  are independent, so a zoom set's statistics are a subset of the rows);
* training samples: ``size_fit``'s (the DSB training split, one random zoom each; the BBBC039
  training part, three each; seed 14; zoomed sides at most 1,024 px);
* checked on the 67 DSB validation images at x1/3, x0.5, x1, x2, x4, x6 (the protocol of
  ``benchmarks/size_estimation.py`` and of the gate's choice), for several MLP seeds, since
  refits of one zoom set differ by about 0.01-0.02 within +-30 %;
* cost: the coarse views' network pixels as a share of a 256 x 256 and of a 1,024 x 1,024
  image (:func:`~nucleiseg.inference.size.view_box`; the timed cost is
  ``benchmarks/size_estimation.py --cost``).

Coarse views are shrunk as new fits shrink them (``--shrink``, default ``box``); the committed
``results/size_zooms.json`` was measured before that, with ``--shrink bilinear``.

The held-out BBBC039 images are not used here: they are for measuring the chosen set
(``benchmarks/size_estimation.py``), not for choosing it::

    python benchmarks/size_zooms.py           # ~12 CPU minutes; results/size_zooms.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from nucleiseg.bundle import ModelBundle
from nucleiseg.inference.segmenter import Segmenter
from nucleiseg.inference.size import SHRINK, SizeModel, design, view_box
from nucleiseg.inference.size_calibration import calibrate_offset, choose_gate, estimate_summary
from nucleiseg.inference.size_fit import CHECK_ZOOMS, fit_mlp, training_probes, validation_samples
from nucleiseg.inference.size_probe import MIN_VIEW

RESULTS = Path(__file__).resolve().parent / "results"
#: Candidate zoom sets (zoom 1 first: the gate and the reuse of the native pass need it).
SETS: dict[str, tuple[float, ...]] = {
    "1, 1/2, 1/4, 1/8": (1.0, 0.5, 0.25, 0.125),
    "1, 1/4, 1/8": (1.0, 0.25, 0.125),
    "1, 1/3, 1/9": (1.0, 1 / 3, 1 / 9),
    "1, 1/3, 1/8": (1.0, 1 / 3, 0.125),
    "1, 1/4, 1/16": (1.0, 0.25, 1 / 16),
    "1, 1/3, 1/9, 1/16": (1.0, 1 / 3, 1 / 9, 1 / 16),
}


def coarse_share(zooms: Sequence[float], shape: tuple[int, int]) -> float:
    """Network pixels of the views other than zoom 1, as a share of an image of ``shape``."""
    pixels = 0
    for zoom in zooms[1:]:
        y0, y1, x0, x1 = view_box(shape, zoom)
        if min(y1 - y0, x1 - x0) * zoom >= MIN_VIEW:
            pixels += round((y1 - y0) * zoom) * round((x1 - x0) * zoom)
    return pixels / (shape[0] * shape[1])


def fit_set(train: dict[str, np.ndarray], val: dict[str, np.ndarray], rows: list[int], zooms: tuple[float, ...],
            seed: int, target: float, tolerance: float) -> tuple[SizeModel, np.ndarray, dict]:
    """Fit, calibrate and gate a size model on the ``rows`` of the statistics; its validation estimates."""
    x = np.stack([design(s[rows], zooms, target) for s in train["stats"]])
    y = np.log(train["true"])

    def fit(a: np.ndarray, b: np.ndarray) -> SizeModel:
        return fit_mlp(a, b, 32, seed=seed)

    model = fit(x, y)
    model.zooms, model.target = list(zooms), target
    model.log_offset = float(calibrate_offset(x, y, list(train["ids"]), fit, seed=seed)["log_offset"])
    vstats = val["stats"][:, rows]
    gate = choose_gate(model, vstats, np.log(val["true"]), max_band=tolerance)
    est = []
    for s in vstats:
        d = model.gate_diameter(s[0])
        est.append(d if d is not None else float(np.exp(model.predict_log(design(s, zooms, target)))))
    return model, np.array(est), gate


def main(argv: Sequence[str] | None = None) -> int:
    """Collect (or load) the statistics, fit every zoom set for every seed, write the results."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--seeds", default="14,1,2,3", help="MLP seeds (14: size_fit's default)")
    ap.add_argument("--cache", type=Path, default=None, help="npz of the collected statistics (read if present, else written)")
    ap.add_argument("--out", type=Path, default=RESULTS / "size_zooms.json")
    ap.add_argument("--shrink", choices=("box", "bilinear"), default=SHRINK,
                    help="how coarse views are shrunk (default %(default)s, as new fits; the committed results: bilinear)")
    args = ap.parse_args(argv)

    folder = ModelBundle.open(args.model).folder
    assert folder is not None
    seg = Segmenter.from_pretrained(folder)
    union = tuple(sorted({z for zooms in SETS.values() for z in zooms}, reverse=True))
    if args.cache is not None and args.cache.is_file():
        data = dict(np.load(args.cache, allow_pickle=False))
        train = {k: data[k] for k in ("ids", "true", "stats", "zoom")}
        val = {k: data["val_" + k] for k in ("ids", "true", "stats", "zoom")}
    else:
        t0 = time.time()
        got = training_probes(seg, folder, union, shrink=args.shrink)  # size_fit's samples: same seed, same draws
        train = {k: np.array(got[k]) for k in ("ids", "true", "stats", "zoom")}
        v = validation_samples(seg, folder, zooms=union, shrink=args.shrink)  # the gate's samples: DSB validation at CHECK_ZOOMS
        val = {k: np.array(v[k]) for k in ("ids", "true", "stats", "zoom")}
        print(f"{len(train['true'])} training and {len(val['true'])} validation samples probed in {time.time() - t0:.0f} s",
              file=sys.stderr)
        if args.cache is not None:
            np.savez(args.cache, **train, **{"val_" + k: a for k, a in val.items()})

    infer = seg.config.infer
    seeds = [int(s) for s in args.seeds.split(",")]
    rows_out = []
    for name, zooms in SETS.items():
        rows = [union.index(z) for z in zooms]
        runs = []
        for seed in seeds:
            model, est, gate = fit_set(train, val, rows, zooms, seed, infer.target_diameter, infer.rescale_tolerance)
            summary = estimate_summary(est, val["true"])
            per_zoom = {f"x{z:.3g}": estimate_summary(est[val["zoom"] == z], val["true"][val["zoom"] == z])["within_30pct"]
                        for z in CHECK_ZOOMS}
            runs.append({"seed": seed, **summary, "per_zoom_within_30pct": per_zoom, "log_offset": model.log_offset,
                         "gate": {k: gate[k] for k in ("gate_objects", "gate_confidence", "gate_band", "opened")}})
            print(f"{name:18s} seed {seed:2d}: within +-30 % {summary['within_30pct']:.3f}, "
                  f"median |log| {summary['median_abs_log']:.3f}", file=sys.stderr)
        within = [r["within_30pct"] for r in runs]
        rows_out.append({
            "zooms": name, "coarse_share_256": round(coarse_share(zooms, (256, 256)), 3),
            "coarse_share_1024": round(coarse_share(zooms, (1024, 1024)), 3),
            "within_30pct_mean": round(float(np.mean(within)), 4), "within_30pct_min": min(within),
            "within_30pct_max": max(within),
            "median_abs_log_mean": round(float(np.mean([r["median_abs_log"] for r in runs])), 4),
            "runs": runs,
        })
    result = {
        "command": "python benchmarks/size_zooms.py" + (f" --model {args.model}" if args.model != "default" else "")
                   + f" --shrink {args.shrink}", "shrink": args.shrink,
        "model": args.model, "model_hash": seg.model_hash, "backend": seg.backend,
        "training_samples": int(train["true"].size), "validation_samples": int(val["true"].size),
        "check": "DSB validation images at x1/3, x0.5, x1, x2, x4, x6; within = |est/true - 1| <= 0.30",
        "seeds": seeds, "sets": rows_out,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    for r in rows_out:
        print(f"{r['zooms']:18s} within +-30 % {r['within_30pct_mean']:.3f} ({r['within_30pct_min']:.3f}-{r['within_30pct_max']:.3f}), "
              f"median |log| {r['median_abs_log_mean']:.3f}, coarse views {r['coarse_share_256']:.3f} of 256x256, "
              f"{r['coarse_share_1024']:.3f} of 1024x1024")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
