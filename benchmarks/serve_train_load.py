"""``/api/segment`` latency and server memory while the web app trains a model.

Starts ``nucleiseg serve`` as a child process on 127.0.0.1 with the bundled examples as a dataset
and a temporary runs folder, then

* ``idle``: sends ``--requests`` sequential segmentations of one image;
* ``training``: starts a training job (``POST /api/train``, recipe ``tiny`` with many epochs and a
  ``--train-seconds`` time budget) and keeps sending the same segmentations until the job leaves
  its training phase; then waits for the validation and the job's end.

The resident memory of the server process alone (the trainer is a child process of its own,
sampled separately) is recorded every 50 ms. Writes ``benchmarks/results/serve_train_load.json``
and prints a summary. The acceptance rule of issue #18: the median latency during training is at
most 3x the idle one.

Usage::

    python benchmarks/serve_train_load.py [--model default] [--requests 20] [--train-seconds 45]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from nucleiseg.inference.batch import versions
from nucleiseg.io.atomic import atomic_write_text

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from serve_load import free_port  # noqa: E402


class Sampler(threading.Thread):
    """Resident memory of the server process and, separately, of its children (the trainer)."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.proc = psutil.Process(pid)
        self.interval = interval
        self.server: list[tuple[float, int]] = []
        self.children_peak = 0
        self.stop = threading.Event()

    def run(self) -> None:
        t0 = time.monotonic()
        while not self.stop.is_set():
            try:
                self.server.append((time.monotonic() - t0, self.proc.memory_info().rss))
                kids = sum(c.memory_info().rss for c in self.proc.children(recursive=True))
                self.children_peak = max(self.children_peak, kids)
            except psutil.Error:
                pass
            time.sleep(self.interval)


def _latencies(client: httpx.Client, image: Path, until) -> list[float]:  # noqa: ANN001
    out = []
    data = image.read_bytes()
    while not until(len(out)):
        t0 = time.perf_counter()
        r = client.post("/api/segment", files={"file": (image.name, data)})
        out.append(time.perf_counter() - t0)
        r.raise_for_status()
    return out


def _stats(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"n": len(values), "median_s": round(statistics.median(values), 4),
            "p90_s": round(ordered[int(0.9 * (len(ordered) - 1))], 4), "max_s": round(ordered[-1], 4)}


def run(model: str, requests: int, train_seconds: float, image: Path) -> dict[str, Any]:
    """Run both phases against a fresh server; return the results record."""
    port = free_port()
    runs = Path(tempfile.mkdtemp(prefix="nucleiseg-bench-runs-"))
    cmd = [sys.executable, "-m", "nucleiseg.cli.serve", "--port", str(port), "--model", model,
           "--data", str(REPO / "examples"), "--runs", str(runs), "--log-level", "warning"]
    server = subprocess.Popen(cmd, start_new_session=True)
    sampler = Sampler(server.pid)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if client.get("/api/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("the server did not start")
                time.sleep(0.2)
            sampler.start()
            _latencies(client, image, lambda n: n >= 3)  # warm-up
            rss_idle = psutil.Process(server.pid).memory_info().rss
            idle = _latencies(client, image, lambda n: n >= requests)
            body = {"dataset": "examples", "recipe": "tiny", "arch": "unet", "epochs": 10_000, "minutes": train_seconds / 60}
            job = client.post("/api/train", json=body).json()

            def training(_: int) -> bool:
                state = client.get(f"/api/jobs/{job['id']}").json()
                return state["state"] != "queued" and state["progress"].get("phase") not in ("preparing", "training", None)

            while client.get(f"/api/jobs/{job['id']}").json()["progress"].get("phase") != "training":
                time.sleep(0.1)
            busy = _latencies(client, image, training)
            while (final := client.get(f"/api/jobs/{job['id']}").json())["state"] not in ("finished", "failed", "stopped"):
                time.sleep(0.5)
            after = _latencies(client, image, lambda n: n >= requests)
    finally:
        sampler.stop.set()
        os.killpg(server.pid, signal.SIGINT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        shutil.rmtree(runs, ignore_errors=True)
    rss = [r for _, r in sampler.server]
    return {
        "model": model, "image": image.name, "cpu_count": os.cpu_count(),
        "idle": _stats(idle), "during_training": _stats(busy), "after_training": _stats(after),
        "ratio_median": round(statistics.median(busy) / statistics.median(idle), 2),
        "job": {"state": final["state"], "epochs": len(final["progress"].get("history", [])), "elapsed_s": final["elapsed_s"]},
        "server_rss_mb": {"idle": round(rss_idle / 2**20, 1), "peak": round(max(rss) / 2**20, 1), "end": round(rss[-1] / 2**20, 1)},
        "trainer_rss_peak_mb": round(sampler.children_peak / 2**20, 1),
        "server_rss_timeline_mb": [[round(t, 1), round(r / 2**20, 1)] for t, r in sampler.server[:: max(1, len(sampler.server) // 40)]],
        "versions": versions(),
    }


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--train-seconds", type=float, default=45.0)
    parser.add_argument("--image", type=Path, default=REPO / "examples" / "fluo_small.png")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "serve_train_load.json")
    args = parser.parse_args()
    result = run(args.model, args.requests, args.train_seconds, args.image)
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    i, b = result["idle"], result["during_training"]
    print(f"/api/segment ({result['model']}, {result['image']}): idle median {i['median_s']} s (p90 {i['p90_s']}), "
          f"during training {b['median_s']} s (p90 {b['p90_s']}, n={b['n']}): {result['ratio_median']}x")
    print(f"server RSS: idle {result['server_rss_mb']['idle']} MB, peak {result['server_rss_mb']['peak']} MB, "
          f"end {result['server_rss_mb']['end']} MB; trainer peak {result['trainer_rss_peak_mb']} MB; job {result['job']}")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
