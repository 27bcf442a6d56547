"""Folder throughput (images/s): serial batch versus Dask LocalClusters of 1 and 2 workers.

The same folder is segmented three (or more) ways with identical outputs: the serial
:func:`nucleiseg.inference.batch.segment_items`, then
:func:`nucleiseg.distributed.segment_items_dask` on a fresh ``LocalCluster`` per worker count.
Model loading and cluster start-up are excluded from the throughput (start-up is reported
separately); every worker is warmed up with one image first. Inputs are the 5 ``examples/``
images repeated (``--repeat``), or the first N DSB training images (``--images N``). The load
average is recorded because the figure depends on what else runs on the machine.
Writes ``benchmarks/results/dask_scaling.json`` and prints a table.

Usage::

    python benchmarks/dask_scaling.py [--model classical,RUN_DIR] [--repeat 4] [--images N]
        [--workers 1,2] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch

from nucleiseg.distributed import dask_client, segment_items_dask
from nucleiseg.distributed.workers import cached_segmenter, model_reference
from nucleiseg.inference.batch import segment_items, versions
from nucleiseg.inference.segmenter import Segmenter
from nucleiseg.io.atomic import atomic_write_text
from nucleiseg.io.labels import InputItem, discover_inputs

REPO = Path(__file__).resolve().parents[1]
DSB = REPO.parent / "shared" / "data" / "dsb2018" / "stage1_train"


def build_inputs(folder: Path, repeat: int, images: int | None) -> list[InputItem]:
    """Copy the inputs into ``folder`` (distinct names) and discover them."""
    if images:
        samples = sorted(p for p in DSB.iterdir() if (p / "images").is_dir())[:images]
        if not samples:
            raise SystemExit(f"no DSB samples under {DSB}")
        for sample in samples:
            shutil.copy(sample / "images" / f"{sample.name}.png", folder / f"{sample.name[:16]}.png")
    else:
        for k in range(repeat):
            for path in sorted((REPO / "examples").glob("*.png")):
                shutil.copy(path, folder / f"{path.stem}_{k}.png")
    return discover_inputs([folder])


def _warm(client, model: str) -> None:
    """Load the model on every worker so the timed run measures segmentation only."""
    client.run(cached_segmenter, model_reference(model))


def time_model(model: str, items: list[InputItem], counts: list[int], tmp: Path) -> list[dict]:
    """Throughput rows of one model: serial, then one LocalCluster per worker count."""
    rows = []
    segmenter = Segmenter.from_pretrained(model)
    segment_items(items[:1], tmp / "warm", segmenter, progress=False)
    t = time.perf_counter()
    serial = segment_items(items, tmp / "serial", segmenter, progress=False)
    seconds = time.perf_counter() - t
    rows.append({"model": model, "mode": "serial", "workers": 0, "threads": torch.get_num_threads(),
                 "images": len(serial.images), "seconds": round(seconds, 3),
                 "images_per_s": round(len(serial.images) / seconds, 3), "startup_s": 0.0})
    for n in counts:
        t = time.perf_counter()
        with dask_client(f"local:{n}") as client:
            _warm(client, model)
            startup = time.perf_counter() - t
            t = time.perf_counter()
            dist = segment_items_dask(items, tmp / f"dask{n}", model, client=client, progress=False)
            seconds = time.perf_counter() - t
        rows.append({"model": model, "mode": "dask", "workers": n, "threads": n, "images": len(dist.images),
                     "seconds": round(seconds, 3), "images_per_s": round(len(dist.images) / seconds, 3), "startup_s": round(startup, 3)})
    return rows


def main() -> None:
    """Parse arguments, time the serial and the Dask runs, write the JSON and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="classical", help="comma-separated: classical, bundled names or run folders")
    parser.add_argument("--repeat", type=int, default=4, help="copies of the 5 example images")
    parser.add_argument("--images", type=int, help="use the first N DSB training images instead")
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "dask_scaling.json")
    args = parser.parse_args()
    counts = [int(w) for w in args.workers.split(",") if w.strip()]
    models = [m for m in args.model.split(",") if m.strip()]
    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "in").mkdir()
        items = build_inputs(tmp / "in", args.repeat, args.images)
        for model in models:
            rows += time_model(model, items, counts, tmp / Path(model).name)
    for row in rows:
        base = next(r["images_per_s"] for r in rows if r["model"] == row["model"] and r["mode"] == "serial")
        row["speedup_vs_serial"] = round(row["images_per_s"] / base, 3)
    result = {
        "benchmark": "dask_scaling",
        "models": models,
        "inputs": f"{args.images} DSB images" if args.images else f"5 examples x {args.repeat}",
        "cpu_count": os.cpu_count(),
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
        "machine": platform.processor() or platform.machine(),
        "versions": versions(),
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(f"{'model':<12}{'mode':<8}{'workers':>8}{'images':>8}{'seconds':>10}{'img/s':>9}{'speedup':>9}{'startup s':>11}")
    for r in rows:
        print(f"{Path(r['model']).name[:11]:<12}{r['mode']:<8}{r['workers']:>8}{r['images']:>8}{r['seconds']:>10.2f}"
              f"{r['images_per_s']:>9.2f}{r['speedup_vs_serial']:>9.2f}{r['startup_s']:>11.2f}")
    print(f"load average before {load_before[0]:.1f} on {os.cpu_count()} CPUs; written {args.out}")


if __name__ == "__main__":
    main()
