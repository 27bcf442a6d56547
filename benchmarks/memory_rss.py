"""Peak resident memory per megapixel of ``nucleiseg segment`` and of ``nucleiseg serve``.

For every size (megapixels, square images) and kind (``mosaic``: real DSB nuclei tiled, gray
uint8; ``zeros``: an all-black image, the issue's worst case for speed) a PNG is written and

* ``cli``: ``python -m nucleiseg.cli.main segment IMAGE -o OUT --quiet`` runs in a child process
  whose process tree is sampled every 20 ms (psutil). Start-up is the peak of the same command
  on a 64 x 64 image (interpreter, imports, the model and one small tile).
* ``server``: ``python -m nucleiseg.cli.serve`` runs in a child process; start-up is its
  resident memory once ``/api/health`` answers, peak is sampled during one ``POST /api/segment``
  of the image, and ``after`` is its resident memory 2 s after the answer.
* ``evaluate``: the same server, one ``POST /api/evaluate`` of the image with its ground truth
  (an ``int32`` TIFF: the DSB masks of the mosaic's sources laid out the same way; none for
  ``zeros``).

``per_mpx`` is ``(peak - start-up) / megapixels``. Rows are merged into the JSON file by
``(mode, kind, mpx)``, so small and large sizes can be measured in separate runs.

Usage::

    python benchmarks/memory_rss.py --sizes 1 4 16 --modes cli server
    python benchmarks/memory_rss.py --sizes 16 64 --kinds mosaic --modes evaluate
    nice -n 10 python benchmarks/memory_rss.py --sizes 64 256 --modes cli
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from serve_load import (  # the benchmarks folder is the script's path
    free_port,
    start_server,
    stop_server,
)

from nucleiseg.benchmark.memory import (
    MB,
    RssSampler,
    child_peak_rss,
    label_mosaic,
    mosaic,
    mosaic_sources,
    mosaic_truth,
)
from nucleiseg.inference.batch import versions
from nucleiseg.io.atomic import atomic_write_text
from nucleiseg.io.images import write_image

REPO = Path(__file__).resolve().parents[1]
DSB = REPO.parent / "shared" / "data" / "dsb2018" / "stage1_train"
RESULT = REPO / "benchmarks" / "results" / "memory_rss.json"
ENV = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1")


def make_image(folder: Path, kind: str, mpx: float, sources: list[np.ndarray]) -> tuple[Path, int]:
    """Write a square ``kind`` PNG of about ``mpx`` megapixels; its path and side."""
    side = max(64, round(math.sqrt(mpx * 1e6)))
    image = mosaic(sources, side, side) if kind == "mosaic" else np.zeros((side, side), np.uint8)
    path = folder / f"{kind}_{side}.png"
    if not path.exists():
        write_image(path, image)
    return path, side


def make_truth(image: Path, side: int, kind: str, truth: list[np.ndarray]) -> Path:
    """The ground truth of a :func:`make_image` image (``side`` pixels square), as an ``int32`` TIFF beside it."""
    path = image.with_name(image.stem + "_gt.tif")
    if not path.exists():
        import tifffile

        labels = label_mosaic(truth, side, side) if kind == "mosaic" else np.zeros((side, side), np.int32)
        tifffile.imwrite(path, labels, compression="zlib")
    return path


def run_cli(image: Path, out: Path, extra: list[str], timeout: float | None = None) -> dict[str, Any]:
    """Peak memory of ``nucleiseg segment`` on one image, with the count it found (None if stopped)."""
    cmd = [sys.executable, "-m", "nucleiseg.cli.main", "segment", str(image), "-o", str(out), "--quiet", *extra]
    row: dict[str, Any] = child_peak_rss(cmd, ENV, timeout)
    row["count"] = None
    if row["completed"]:
        records = json.loads((out / "run.json").read_text())["images"]
        row["count"] = records[0].get("count") if records else None
    return row


def _post(port: int, path: Path, truth: Path | None) -> httpx.Response:
    """``POST /api/segment`` of ``path``, or ``/api/evaluate`` with ``truth``."""
    files = {"file": (path.name, path.read_bytes(), "image/png")}
    if truth is None:
        return httpx.post(f"http://127.0.0.1:{port}/api/segment", files=files, timeout=7200)
    files["gt"] = (truth.name, truth.read_bytes(), "image/tiff")
    return httpx.post(f"http://127.0.0.1:{port}/api/evaluate", files=files, timeout=7200)


def run_server(images: list[tuple[str, float, Path, Path | None]], max_pixels: int, mode: str = "server") -> list[dict[str, Any]]:
    """One server; each image posted once in turn: start-up, peak and after-request memory.

    ``mode`` ``"evaluate"`` posts each image with its ground truth (the fourth member) to
    ``/api/evaluate``; ``"server"`` posts it to ``/api/segment``.
    """
    port = free_port()
    options = argparse.Namespace(model="default", max_concurrency=2, max_queue=8)
    proc = start_server(options, port, ("--max-pixels", str(max_pixels), "--max-upload-mb", "512"))
    sampler = RssSampler(proc.pid)
    sampler.start()
    rows = []
    try:
        time.sleep(2.0)
        startup = sampler.current()
        for kind, mpx, path, truth in images:
            before = sampler.current()
            sampler.reset()
            t = time.perf_counter()
            r = _post(port, path, truth if mode == "evaluate" else None)
            seconds = time.perf_counter() - t
            time.sleep(2.0)
            peak = sampler.peak
            after = sampler.current()
            ok = r.status_code == 200
            rows.append({
                "mode": mode, "kind": kind, "mpx": mpx, "status": r.status_code,
                "count": r.json().get("count") if ok else None, "seconds": round(seconds, 2),
                **({"score": r.json().get("competition_score") if ok else None} if mode == "evaluate" else {}),
                "startup_mb": round(startup / MB, 1), "before_mb": round(before / MB, 1),
                "peak_mb": round(peak / MB, 1), "after_mb": round(after / MB, 1),
                "per_mpx": round((peak - startup) / MB / mpx, 2),
            })
            print(json.dumps(rows[-1]), flush=True)
    finally:
        sampler.stop()
        stop_server(proc)
    return rows


def merge(rows: list[dict[str, Any]], path: Path, settings: dict[str, Any]) -> None:
    """Merge ``rows`` into the result file by ``(mode, kind, mpx)``."""
    old = json.loads(path.read_text()) if path.exists() else {"rows": []}
    table = {(r["mode"], r["kind"], r["mpx"]): r for r in [*old.get("rows", []), *rows]}
    result = {
        "benchmark": "benchmarks/memory_rss.py", "date": time.strftime("%Y-%m-%dT%H:%M:%S"), "machine": versions(),
        "settings": settings, "startup": {**old.get("startup", {}), **settings.pop("_startup", {})},
        "rows": sorted(table.values(), key=lambda r: (r["mode"], r["kind"], r["mpx"])),
    }
    atomic_write_text(path, json.dumps(result, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    """Measure, print one JSON line per row, merge into the result file."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=float, nargs="+", default=[1, 4, 16], help="megapixels (default 1 4 16)")
    p.add_argument("--kinds", nargs="+", default=["mosaic", "zeros"], choices=["mosaic", "zeros"])
    p.add_argument("--modes", nargs="+", default=["cli", "server"], choices=["cli", "server", "evaluate"])
    p.add_argument("--cli-args", default="", help="extra arguments for nucleiseg segment (one string)")
    p.add_argument("--images", type=Path, help="folder for the test images (kept; default: a temporary folder)")
    p.add_argument("--out", type=Path, default=RESULT)
    p.add_argument("--timeout", type=float, help="stop a CLI run after this many seconds and keep its peak so far (completed: false)")
    args = p.parse_args(argv)
    sources = mosaic_sources(DSB)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="nucleiseg-mem-") as tmp:
        folder = args.images or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        images = [(kind, mpx, *make_image(folder, kind, mpx, sources)) for mpx in args.sizes for kind in args.kinds]
        truth = mosaic_truth(DSB) if "evaluate" in args.modes else []
        startup: dict[str, float] = {}
        if "cli" in args.modes:
            tiny, _ = make_image(folder, "mosaic", 0.004, sources)
            startup["cli_mb"] = run_cli(tiny, Path(tmp) / "out_tiny", args.cli_args.split())["peak_mb"]
            print(json.dumps({"cli_startup_mb": startup["cli_mb"]}), flush=True)
            for kind, mpx, path, _ in images:
                row = run_cli(path, Path(tmp) / f"out_{kind}_{mpx}", args.cli_args.split(), args.timeout)
                row.update(mode="cli", kind=kind, mpx=mpx, startup_mb=startup["cli_mb"],
                           per_mpx=round((row["peak_mb"] - startup["cli_mb"]) / mpx, 2))
                rows.append(row)
                print(json.dumps(row), flush=True)
        top = max(64_000_000, *(int(mpx * 1e6) + 1 for _, mpx, _, _ in images))
        for mode in ("server", "evaluate"):
            if mode in args.modes:
                with_truth = [(kind, mpx, path, make_truth(path, side, kind, truth) if mode == "evaluate" else None)
                              for kind, mpx, path, side in images]
                rows += run_server(with_truth, top, mode)
    merge(rows, args.out, {"cli_args": args.cli_args, "_startup": startup})
    return 0


if __name__ == "__main__":
    sys.exit(main())
