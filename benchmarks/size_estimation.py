"""Nucleus size estimation: accuracy over zooms x1/3 .. x6, and cost against one segmentation.

Accuracy: the 67 DSB validation images of the model (``split.json`` "val") and the 40 held-out
BBBC039 images (``nucleiseg/io/splits/bbbc039_heldout.txt``), each zoomed x1/3, x0.5, x1, x2,
x4 and x6 (image by ``rescale_image``, ground truth by ``resize_labels``), the source cropped
centrally first so no zoomed side exceeds 1024 pixels. Truth: ``estimate_diameter`` of the
zoomed ground truth. Estimators: ``new`` (the model's size estimator, ``size_model.json``) and
``old`` (the objects of a first native pass, the estimate before issue #14)::

    python benchmarks/size_estimation.py                 # both, writes results/size_estimation.json
    python benchmarks/size_estimation.py --which new     # keeps the old figures of the file

Oracle (``--oracle 0.5``): the validation images zoomed as in the accuracy suite's row, scored
(competition score) when segmented with the estimate and with the true median diameter given
(``InferConfig.diameter``), to tell estimator error from what the zoom itself costs; for zooms
below 1 also the native predictions shrunk to the zoomed grid (what the metric alone costs).

Cost (``--cost``): on 256 x 256 and 1024 x 1024 images (DSB validation images centre-cropped or
mirror-tiled, as ``nucleiseg benchmark`` prepares them), the seconds of the ``estimate`` stage
of :meth:`Segmenter.segment` and of a whole segmentation at native scale (``rescale`` off).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from nucleiseg.bundle import ModelBundle
from nucleiseg.inference.segmenter import Segmenter
from nucleiseg.inference.scale import resize_labels
from nucleiseg.inference.size_calibration import estimate_summary as summary
from nucleiseg.inference.size_fit import CHECK_ZOOMS as ZOOMS
from nucleiseg.inference.size_samples import bbbc039_images, dsb_images, zoomed
from nucleiseg.io.splits import bbbc039_heldout
from nucleiseg.postprocess import estimate_diameter
from nucleiseg.transforms import normalize_image

MAX_SIDE = 1024
OUT = Path(__file__).resolve().parent / "results" / "size_estimation.json"


def accuracy(model: str, which: list[str], every: int = 1) -> dict:
    folder = ModelBundle.open(model).folder
    seg = Segmenter.from_pretrained(folder)
    if seg.size_model is None and "new" in which:
        raise SystemExit(f"{folder} has no size_model.json: run python -m nucleiseg.inference.size_fit --model {model}")
    old = Segmenter(seg.config, seg.predictor, seg.stride, seg.name, seg.model_hash, None)
    val = json.loads((folder / "split.json").read_text())["val"]
    rows = []
    t0 = time.perf_counter()
    sources = [("dsb_val", dsb_images(val[::every])), ("bbbc039_heldout", bbbc039_images(bbbc039_heldout()[::every]))]
    for dataset, samples in sources:
        for key, image, labels in samples:
            for zoom in ZOOMS:
                img, lab = zoomed(image, labels, zoom, MAX_SIDE)
                true = estimate_diameter(lab)
                if not math.isfinite(true):
                    continue
                norm = normalize_image(img, seg.config.normalize)
                row = {"dataset": dataset, "id": key, "zoom": round(zoom, 4), "shape": list(img.shape[:2]), "true": round(true, 3)}
                for name, s in (("new", seg), ("old", old)):
                    if name in which:
                        t = time.perf_counter()
                        found = s.estimate_size(norm)
                        d = found.diameter
                        row[name] = None if d is None else round(float(d), 3)
                        if name == "new":
                            row["new_gated"] = found.gated
                        row[f"{name}_seconds"] = round(time.perf_counter() - t, 4)
                rows.append(row)
            print(f"{dataset} {key}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return {"rows": rows}


def tabulate(rows: list[dict], names: list[str]) -> dict:
    """Per estimator: all images, per dataset and per zoom (over the rows that have its estimate)."""
    out: dict = {}
    for name in names:
        have = [r for r in rows if name in r]
        if not have:
            continue

        def pick(sel: list[dict], name: str = name) -> dict:
            return summary([np.nan if r[name] is None else r[name] for r in sel], [r["true"] for r in sel])

        res = {"all": pick(have)}
        for dataset in sorted({r["dataset"] for r in have}):
            sub = [r for r in have if r["dataset"] == dataset]
            res[dataset] = pick(sub) | {"by_zoom": {str(round(z, 4)): pick([r for r in sub if r["zoom"] == round(z, 4)]) for z in ZOOMS}}
        res["seconds_median"] = round(statistics.median(r[f"{name}_seconds"] for r in have), 4)
        if name == "new" and any("new_gated" in r for r in have):  # share of images the gate ended after the zoom-1 view
            res["gated_share"] = round(float(np.mean([bool(r.get("new_gated")) for r in have])), 4)
        out[name] = res
    old_rows = [r for r in rows if "old" in r and "new" in r]
    if old_rows and len(old_rows) < len(rows):  # the new estimator on exactly the old one's images
        out["new_on_old_images"] = tabulate(old_rows, ["new"])["new"]
    return out


def cost(model: str, repeats: int) -> dict:
    """Seconds of the estimate stage and of native segmentations on 256 and 1024 px images."""
    import tempfile

    from nucleiseg.benchmark.images import prepare_images
    from nucleiseg.io.images import read_image

    folder = ModelBundle.open(model).folder
    seg = Segmenter.from_pretrained(folder)
    val = json.loads((folder / "split.json").read_text())["val"]
    dsb = Path("/work/shared/data/dsb2018/stage1_train")
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        prepared = prepare_images([dsb / i for i in val[:3]], [256, 1024], Path(tmp), 3)
        for size, ims in prepared.items():
            per = []
            for im in ims:
                image = read_image(im["path"])
                seg.segment(image)  # warm-up
                runs = {"auto": [], "native": [], "estimate": []}
                for _ in range(repeats):
                    t = time.perf_counter()
                    auto = seg.segment(image, keep_probabilities=False)
                    runs["auto"].append(time.perf_counter() - t)
                    runs["estimate"].append(auto.timings["estimate"])
                    t = time.perf_counter()
                    seg.segment(image, replace(seg.config.infer, rescale=False), keep_probabilities=False)
                    runs["native"].append(time.perf_counter() - t)
                med = {k: statistics.median(v) for k, v in runs.items()}
                per.append({"id": im["id"], "scale": auto.scale, "diameter": round(float(auto.diameter or 0), 2),
                            **{f"{k}_s": round(v, 4) for k, v in med.items()},
                            "overhead_vs_native": round(med["auto"] / med["native"] - 1.0, 4)})
                print(size, per[-1], file=sys.stderr)
            out[str(size)] = {"images": per, "median_overhead_vs_native": round(statistics.median(p["overhead_vs_native"] for p in per), 4)}
    return out


def whole_command(model: str, repeats: int) -> dict:
    """Seconds of the whole default command over the validation images, with and without the estimate.

    Runs ``nucleiseg segment <val> -o <out>`` and the same with ``--no-rescale`` alternately,
    ``repeats`` times each (fresh processes; medians), and counts the zoom decisions.
    """
    import tempfile

    from nucleiseg.benchmark.command import run_command, segment_command
    from nucleiseg.benchmark.images import validation_set

    folder = ModelBundle.open(model).folder
    with tempfile.TemporaryDirectory(prefix="nucleiseg-size-") as tmp:
        val = validation_set(folder, Path(tmp))
        if val is None:
            raise SystemExit(f"{folder}: no validation images here")
        runs: dict[str, list[float]] = {"estimated": [], "no_rescale": []}
        for _ in range(repeats):
            for key, extra in (("estimated", []), ("no_rescale", ["--no-rescale"])):
                out = Path(tmp) / key
                runs[key] += run_command(segment_command([val], out, model, "auto", extra), out, 1)["runs"]
        scales = [r["scale"] for r in json.loads((Path(tmp) / "estimated" / "run.json").read_text())["images"]]
    med = {k: statistics.median(v) for k, v in runs.items()}
    return {
        "command": "nucleiseg segment <67 validation images> -o OUT [--no-rescale]", "runs_s": runs,
        "estimated_s": round(med["estimated"], 2), "no_rescale_s": round(med["no_rescale"], 2),
        "ratio": round(med["estimated"] / med["no_rescale"], 3),
        "decisions": {"native": sum(x == 1.0 for x in scales), "upscaled": sum(x > 1.0 for x in scales),
                      "downscaled": sum(x < 1.0 for x in scales)},
    }


def oracle(model: str, zoom: float) -> dict:
    """Mean score of the validation images zoomed by ``zoom``: estimated size vs the true diameter given."""
    from nucleiseg.metrics import competition_score

    folder = ModelBundle.open(model).folder
    seg = Segmenter.from_pretrained(model)
    ids = json.loads((folder / "split.json").read_text())["val"]
    scores: dict[str, list[float]] = {"estimated": [], "true_diameter": [], "native_shrunk": []}
    zooms: dict[str, list[float]] = {"estimated": [], "true_diameter": []}
    for _, native, native_labels in dsb_images(ids):
        image, labels = zoomed(native, native_labels, zoom)
        if zoom < 1:  # what the metric alone costs: native predictions on the zoomed grid
            pred = seg.segment(native, keep_probabilities=False).labels
            scores["native_shrunk"].append(competition_score(labels, resize_labels(pred, labels.shape)))
        for key, infer in (("estimated", seg.config.infer), ("true_diameter", replace(seg.config.infer, diameter=estimate_diameter(labels)))):
            result = seg.segment(image, infer, keep_probabilities=False)
            scores[key].append(competition_score(labels, result.labels))
            zooms[key].append(result.scale)
    return {
        "zoom": zoom, "images": len(ids),
        "score": {k: round(float(np.mean(v)), 4) for k, v in scores.items() if v},
        "median_zoom_used": {k: round(float(np.median(v)), 3) for k, v in zooms.items()},
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--which", choices=["new", "old", "both"], default="both")
    ap.add_argument("--cost", action="store_true", help="measure the cost instead of the accuracy")
    ap.add_argument("--whole", action="store_true", help="time the whole default command with and without the estimate")
    ap.add_argument("--oracle", type=float, default=None, metavar="ZOOM",
                    help="score the validation images zoomed by ZOOM with the estimate and with the true diameter")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--every", type=int, default=1, help="use every n-th image only (the old estimator is slow)")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (library default when omitted)")
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    previous = json.loads(args.out.read_text()) if args.out.is_file() else {}
    if args.oracle is not None:
        previous.setdefault("oracle", {})[str(args.oracle)] = {
            "command": "python benchmarks/size_estimation.py " + " ".join(sys.argv[1:]), **oracle(args.model, args.oracle)}
        print(json.dumps(previous["oracle"][str(args.oracle)], indent=1))
    elif args.whole:
        previous["whole_command"] = {"script": "python benchmarks/size_estimation.py " + " ".join(sys.argv[1:]),
                                     **whole_command(args.model, args.repeats)}
        print(json.dumps(previous["whole_command"], indent=1))
    elif args.cost:
        previous["cost"] = {"command": "python benchmarks/size_estimation.py " + " ".join(sys.argv[1:]), **cost(args.model, args.repeats)}
    else:
        which = ["new", "old"] if args.which == "both" else [args.which]
        rows = accuracy(args.model, which, args.every)["rows"]
        old_rows = {(r["dataset"], r["id"], r["zoom"]): r for r in previous.get("rows", [])}
        for r in rows:  # keep the other estimator's figures of an earlier run
            before = old_rows.get((r["dataset"], r["id"], r["zoom"]), {})
            for k, v in before.items():
                r.setdefault(k, v)
        previous.update({
            "command": "python benchmarks/size_estimation.py " + " ".join(sys.argv[1:]), "model": args.model,
            "protocol": f"zooms {[round(z, 4) for z in ZOOMS]}; source centre-cropped so zoomed sides <= {MAX_SIDE}; "
                        "truth = estimate_diameter(zoomed ground truth); within = |est/true - 1| <= 0.30",
            "summary": tabulate(rows, ["new", "old"]), "rows": rows,
        })
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(previous, indent=1) + "\n")
    print(json.dumps(previous.get("summary", {}), indent=1)[:3000])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
