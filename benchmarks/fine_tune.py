"""Few-shot fine-tuning curve: the default fine-tuned on 1, 2 or 4 annotated images (or 256 x 256 crops)
for 2, 5 or 10 minutes, scored on images it never saw, beside the parent's score on them.

Sets:

* ``monuseg``: MoNuSeg 2018 test (H&E, measuring only). The images named in
  ``benchmarks/monuseg_finetune_split.txt`` are the fine-tuning pool (the first N are used);
  the other 10 are scored. This benchmark is the only place any MoNuSeg image is trained on;
  its runs are written to a scratch folder and never bundled.
* ``dsb_tissue``: the default's DSB validation images (its ``split.json``, never trained on)
  of the stained-tissue kind, its weakest; the first ``--dsb-pool`` (sorted ids) are the pool,
  the rest are scored.

Budgets: a cell's ``MIN`` minutes are run as ``round(EPOCHS_PER_MINUTE * MIN)`` epochs of the
built-in 20 steps (``FineTuneConfig.epochs``), the number of epochs the idle 2-core machine trains
in that time (measured: ``monuseg:2x10:clock``, a real 10-minute budget on the idle machine, ran
17 epochs and one step). So a cell gives the same result whatever else the machine runs; its
wall time is recorded beside it. The ``clock`` variant runs the real time budget instead.

Each cell ``SET:N[c]xMIN[:VARIANT]`` (``c``: 256 x 256 crops holding ~100 nuclei, one per pool
image, instead of whole images; variants: ``lr3e-4`` (the built-in recipe's learning rate before
these measurements made it 1e-3), ``light`` augmentation, ``noavg`` (no weight averaging),
``small_lr3e-4`` (128-pixel crops, 4 a batch: about twice the steps, at lr 3e-4), ``clock`` (the
time budget itself instead of its epochs)) runs
``nucleiseg train --from default`` through the Python API, then scores the run with the user
pipeline (int8 ONNX, size estimate, tuned thresholds) on the scored images. The result file is
rewritten after every cell, and cells already in it are skipped, so the benchmark resumes; the
load average of the machine is recorded per cell, because time budgets depend on it.

Usage::

    nice -n 10 python benchmarks/fine_tune.py --cells monuseg:2x10,monuseg:2x5 [--work /tmp/ft_bench]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
RESULT = ROOT / "benchmarks" / "results" / "fine_tune.json"
SPLIT = ROOT / "benchmarks" / "monuseg_finetune_split.txt"
PRIORITY = ("monuseg:2x10:clock,monuseg:2x5,monuseg:2x2,monuseg:1x5,monuseg:4x5,monuseg:4x10,monuseg:2cx5,"
            "monuseg:4cx10,dsb_tissue:4x5,monuseg:1x10,monuseg:1x2,monuseg:4x2,monuseg:4x30")
#: Epochs the idle 2-core machine trains per minute of budget (monuseg:2x10:clock: 17 epochs + 1 step in 10 min).
EPOCHS_PER_MINUTE = 1.7
VARIANTS: dict[str, dict[str, Any]] = {"": {}, "lr3e-4": {"lr": 3e-4}, "light": {"augment": "light"}, "noavg": {"average_from": None},
                                       "small_lr3e-4": {"crop_size": 128, "batch_size": 4, "lr": 3e-4}, "clock": {}}


def load_pair(image: Path, mask: Path) -> tuple[np.ndarray, np.ndarray]:
    """An image and its label image."""
    from nucleiseg.io.images import read_image
    from nucleiseg.io.labels import InputItem, load_item_gt

    labels = load_item_gt(InputItem(image.stem, image, mask, "label"))
    assert labels is not None
    return read_image(image), labels


def set_files(name: str, dsb_pool: int) -> tuple[list[tuple[str, Path, Path]], list[tuple[str, Path, Path]]]:
    """``(pool, scored)``: lists of ``(id, image, labels)``; DSB labels are the sample folders."""
    if name == "monuseg":
        folder = SHARED / "external" / "monuseg_test"
        pool_ids = [ln.strip() for ln in SPLIT.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
        every = sorted(p.stem for p in (folder / "images").glob("*.tif"))
        files = {i: (i, folder / "images" / f"{i}.tif", folder / "masks" / f"{i}.tif") for i in every}
        return [files[i] for i in pool_ids], [files[i] for i in every if i not in pool_ids]
    if name == "dsb_tissue":
        from nucleiseg.benchmark.suite_sets import image_kind, validation_split_ids
        from nucleiseg.io.dsb import load_sample

        dsb = SHARED / "dsb2018" / "stage1_train"
        ids = [i for i in sorted(validation_split_ids()) if image_kind(load_sample(dsb / i, check=False).image) == "tissue"]
        files = [(i, dsb / i / "images" / f"{i}.png", dsb / i) for i in ids]
        return files[:dsb_pool], files[dsb_pool:]
    raise ValueError(f"unknown set {name!r} (monuseg, dsb_tissue)")


def read_files(entry: tuple[str, Path, Path]) -> tuple[np.ndarray, np.ndarray]:
    """Image and labels of a ``(id, image, labels)`` entry (a DSB sample folder or a label image)."""
    if entry[2].is_dir():
        from nucleiseg.io.dsb import load_sample

        sample = load_sample(entry[2], check=False)
        return sample.image, sample.labels
    return load_pair(entry[1], entry[2])


def busiest_crop(labels: np.ndarray, side: int = 256, target: int = 100) -> tuple[int, int]:
    """Top-left corner of the ``side`` crop (on a coarse grid) whose nucleus count is closest to ``target``."""
    best, corner = None, (0, 0)
    h, w = labels.shape
    for y in range(0, max(1, h - side + 1), side // 4):
        for x in range(0, max(1, w - side + 1), side // 4):
            count = len(np.unique(labels[y:y + side, x:x + side])) - 1
            if best is None or abs(count - target) < best:
                best, corner = abs(count - target), (y, x)
    return corner


def stage(pool: list[tuple[str, Path, Path]], n: int, crops: bool, folder: Path) -> dict[str, Any]:
    """Write the first ``n`` pool images (or a ~100-nucleus crop of each) as ``x.tif`` + ``x_masks.tif``."""
    import tifffile

    folder.mkdir(parents=True, exist_ok=True)
    nuclei = 0
    for entry in pool[:n]:
        image, labels = read_files(entry)
        if crops:
            y, x = busiest_crop(labels)
            image, labels = image[y:y + 256, x:x + 256], labels[y:y + 256, x:x + 256]
        nuclei += len(np.unique(labels)) - 1
        tifffile.imwrite(folder / f"{entry[0]}.tif", image)
        tifffile.imwrite(folder / f"{entry[0]}_masks.tif", labels.astype(np.int32))
    return {"images": [e[0] for e in pool[:n]], "nuclei": int(nuclei)}


def score(model: str | Path, scored: list[tuple[str, Path, Path]], diameter: float | None = None) -> dict[str, Any]:
    """The user pipeline's competition score (macro mean) of ``model`` on the scored images."""
    from nucleiseg.inference.segmenter import Segmenter
    from nucleiseg.metrics import evaluate_pairs

    seg = Segmenter.from_pretrained(model)
    infer = seg.config.infer if diameter is None else replace(seg.config.infer, diameter=diameter)
    t = time.perf_counter()
    items = []
    for entry in scored:
        image, labels = read_files(entry)
        items.append((entry[0], labels, seg.segment(image, infer=infer, keep_probabilities=False).labels))
    summary = evaluate_pairs(items).summary
    return {"score": round(float(summary["score_macro"]), 4), "ap50": round(float(summary["ap50"]), 4),
            "f1_50": round(float(summary["f1_50"]), 4), "seconds": round(time.perf_counter() - t, 1),
            "backend": seg.backend if hasattr(seg, "backend") else None}


def train_diameter(folder: Path) -> float:
    """Median nucleus diameter of the staged training labels (the fixed-diameter alternative to the size model)."""
    import tifffile

    from nucleiseg.postprocess import estimate_diameter

    return float(np.median([estimate_diameter(tifffile.imread(p)) for p in sorted(folder.glob("*_masks.tif"))]))


def training_steps(run: Path) -> int:
    """Optimizer steps a run took (from its ``progress.jsonl``)."""
    from nucleiseg.training.progress import read_progress

    steps: dict[int, int] = {}
    for ev in read_progress(run / "progress.jsonl"):
        if ev["event"] in ("step", "epoch") and "epoch" in ev:
            count = ev.get("steps") if ev["event"] == "epoch" else ev.get("step")
            steps[ev["epoch"]] = max(steps.get(ev["epoch"], 0), int(count or 0))
    return sum(steps.values())


def run_cell(key: str, args: argparse.Namespace, result: dict[str, Any]) -> dict[str, Any]:
    """Fine-tune and score one cell ``SET:N[c]xMIN[:VARIANT]``."""
    from nucleiseg.training.finetune import FineTuneConfig, fine_tune

    parts = key.split(":")
    set_name, shape, variant = parts[0], parts[1], parts[2] if len(parts) > 2 else ""
    n_text, minutes = shape.split("x")
    crops, n = n_text.endswith("c"), int(n_text.rstrip("c"))
    pool, scored = set_files(set_name, args.dsb_pool)
    if set_name not in result["parents"]:
        result["parents"][set_name] = {"scored": [e[0] for e in scored], "default": score("default", scored)}
    work = Path(args.work) / key.replace(":", "_")
    data = work / "data"
    staged = stage(pool, n, crops, data)
    epochs = None if variant == "clock" else max(1, math.floor(EPOCHS_PER_MINUTE * float(minutes) + 0.5))
    ft = FineTuneConfig(parent="default", data=str(data), out=str(work / "run"), max_minutes=float(minutes), epochs=epochs,
                        threads=args.threads, **VARIANTS[variant])
    load_before, t = os.getloadavg(), time.perf_counter()
    run = fine_tune(ft, progress=False, device="cpu", allow_measuring_only=set_name == "monuseg")
    wall = time.perf_counter() - t
    report = json.loads((run / "report.json").read_text())
    cell = {"set": set_name, "n": n, "crops": crops, "minutes": float(minutes), "variant": variant or "built-in",
            "staged": staged, "recipe": {k: v for k, v in vars(ft).items() if k not in ("data", "out")},
            "fine_tune_wall_s": round(wall, 1), "epochs_run": report["epochs_run"], "steps": training_steps(run),
            "weights": report["weights"],
            "loadavg_before": [round(x, 2) for x in load_before], "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            "evaluation": json.loads((run / "evaluation.json").read_text()),
            "fine_tuned": score(run, scored)}
    if n == 2 and not crops and variant in ("", "clock"):  # the size model: reused (above) vs a fixed diameter from the labels
        diameter = train_diameter(data)
        cell["fixed_diameter"] = {"diameter": round(diameter, 1), **score(run, scored, diameter)}
    cell["parent_score"] = result["parents"][set_name]["default"]["score"]
    return cell


def forgetting(key: str, work: Path) -> dict[str, Any]:
    """The accuracy suite (the user's ``nucleiseg segment`` per row) for the parent and for the run of cell ``key``."""
    from nucleiseg.benchmark.accuracy import run_suite

    rows: dict[str, Any] = {"cell": key}
    for name, model in (("parent", "default"), ("fine_tuned", str(work / key.replace(":", "_") / "run"))):
        suite = run_suite(model, SHARED, work / "suite" / name, baseline_file=ROOT / "benchmarks" / "results" / "accuracy_classical.json")
        rows[name] = {"unseen_kinds": suite["summary"]["unseen_kinds"], "rows": {k: v["score"] for k, v in suite["rows"].items()},
                      "validation_by_kind": {k: v["score"] for k, v in suite["val_by_kind"]["model"].items()}}
    return rows


def forgetting_lines(f: dict[str, Any]) -> list[str]:
    """The forgetting check as Markdown rows: parent and fine-tuned score per suite row."""
    lines = ["", (f"What the `{f['cell']}` run forgot, on the accuracy suite (`benchmarks/accuracy_suite.py` rows; its 4 training "
                  "images are among the DSB validation rows, so the tissue figures there are not held out):"), "",
             "| suite row | parent | fine-tuned |", "|---|---|---|",
             f"| unseen kinds | {f['parent']['unseen_kinds']:.4f} | {f['fine_tuned']['unseen_kinds']:.4f} |"]
    for row, value in f["parent"]["rows"].items():
        lines.append(f"| {row} | {value:.4f} | {f['fine_tuned']['rows'][row]:.4f} |")
    for kind, value in f["parent"]["validation_by_kind"].items():
        lines.append(f"| DSB validation, {kind} | {value:.4f} | {f['fine_tuned']['validation_by_kind'][kind]:.4f} |")
    return lines


def markdown(result: dict[str, Any]) -> str:
    """The result as a table."""
    lines = ["# Fine-tuning the default on a few images (`benchmarks/fine_tune.py`)", "",
             f"Command: `{result['command']}`; {result['machine']}.", "", *([result["note"], ""] if result.get("note") else []),
             "| set | training data | budget | recipe | parent | fine-tuned | AP@0.5 | steps | wall (s) | load avg (1 min) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for key, c in result["cells"].items():
        data = f"{c['n']} crop(s) 256x256, {c['staged']['nuclei']} nuclei" if c["crops"] else f"{c['n']} image(s), {c['staged']['nuclei']} nuclei"
        budget = f"{c['minutes']:g} min" + (f" ({c['recipe']['epochs']} epochs)" if c["recipe"].get("epochs") else " (clock)")
        lines.append(f"| {c['set']} | {data} | {budget} | {c['variant']} | {c['parent_score']:.4f} | "
                     f"**{c['fine_tuned']['score']:.4f}** | {c['fine_tuned']['ap50']:.4f} | {c.get('steps', '?')} | {c['fine_tune_wall_s']:.0f} | "
                     f"{c['loadavg_before'][0]:.1f} -> {c['loadavg_after'][0]:.1f} |")
    for key, c in result["cells"].items():
        if "fixed_diameter" in c:
            f = c["fixed_diameter"]
            lines.append(f"\n{key}: size model reused {c['fine_tuned']['score']:.4f}; fixed diameter {f['diameter']} px "
                         f"from the training labels instead {f['score']:.4f}.")
    if "forgetting" in result:
        lines += forgetting_lines(result["forgetting"])
    return "\n".join(lines) + "\n"


def save(result: dict[str, Any], path: Path) -> None:
    """Write the JSON and Markdown results atomically."""
    from nucleiseg.io.atomic import atomic_write_text

    atomic_write_text(path, json.dumps(result, indent=1))
    atomic_write_text(path.with_suffix(".md"), markdown(result))


def main(argv: list[str] | None = None) -> int:
    """Run the cells not yet in the result file, in the order given."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", default=PRIORITY, help="comma-separated SET:N[c]xMIN[:VARIANT] (default: the priority list)")
    parser.add_argument("--result", type=Path, default=RESULT)
    parser.add_argument("--work", default="/tmp/nucleiseg_fine_tune_bench")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dsb-pool", type=int, default=4)
    parser.add_argument("--forgetting", default="dsb_tissue:4x5",
                        help="after the cells, run the accuracy suite on this cell's run and on the parent ('' to skip)")
    args = parser.parse_args(argv)
    result = json.loads(args.result.read_text()) if args.result.is_file() else {"cells": {}, "parents": {}}
    result["command"] = "python benchmarks/fine_tune.py" + (f" --cells {args.cells}" if args.cells != PRIORITY else "")
    for key, cell in result["cells"].items():  # cells of an older version of this script
        run = Path(args.work) / key.replace(":", "_") / "run"
        if "steps" not in cell and run.is_dir():
            cell["steps"] = training_steps(run)
    result["machine"] = (f"{os.cpu_count()} CPU cores shared with other work (load average recorded per cell), "
                         f"torch threads {args.threads}")
    for key in [k.strip() for k in args.cells.split(",") if k.strip()]:
        if key in result["cells"]:
            continue
        try:
            result["cells"][key] = run_cell(key, args, result)
        except Exception as exc:  # noqa: BLE001 - one failed cell must not lose the others
            print(f"{key}: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            continue
        save(result, args.result)
        c = result["cells"][key]
        print(f"{key}: parent {c['parent_score']:.4f} fine-tuned {c['fine_tuned']['score']:.4f} ({c['fine_tune_wall_s']:.0f} s)", flush=True)
    if args.forgetting in result["cells"] and "forgetting" not in result:
        result["forgetting"] = forgetting(args.forgetting, Path(args.work))
    save(result, args.result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
