"""Load test of ``nucleiseg serve``: concurrent uploads against a local server process.

Starts the server as a child process on 127.0.0.1 (a free port), then runs two phases with the
same image:

* ``burst``: all N uploads at once. The server admits ``max_concurrency + max_queue`` of them and
  must answer the rest with 503 at once; none may go unanswered.
* ``bounded``: the client keeps at most ``max_concurrency + max_queue`` uploads in flight, so
  every one should succeed; this gives the throughput.

Records every status code, latencies, wall time and the peak resident memory of the server
process (sampled every 20 ms with psutil), writes ``benchmarks/results/serve_load.json`` and
prints a table. Loopback only; the server is stopped at the end, also on errors.

Usage::

    python benchmarks/serve_load.py [--model classical] [--requests 50] [--image PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from nucleiseg.benchmark.memory import RssSampler
from nucleiseg.inference.batch import versions
from nucleiseg.io.atomic import atomic_write_text

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """An unused TCP port on the loopback interface."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def upload_all(url: str, data: bytes, name: str, n: int, in_flight: int, timeout: float) -> dict[str, Any]:
    """Send ``n`` uploads with at most ``in_flight`` at a time; return statuses and latencies."""
    gate = asyncio.Semaphore(in_flight)
    statuses: list[str] = []
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=in_flight, max_keepalive_connections=in_flight)

    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:

        async def one() -> None:
            async with gate:
                t = time.perf_counter()
                try:
                    r = await client.post(url, files={"file": (name, data, "application/octet-stream")})
                    statuses.append(str(r.status_code))
                    if r.status_code == 200:
                        latencies.append(time.perf_counter() - t)
                except httpx.HTTPError as exc:
                    statuses.append(f"no answer ({type(exc).__name__})")

        t0 = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(one() for _ in range(n))), timeout=timeout * 2)
        wall = time.perf_counter() - t0
    counts = {s: statuses.count(s) for s in sorted(set(statuses))}
    ok = counts.get("200", 0)
    lat = np.array(latencies) if latencies else np.zeros(1)
    return {
        "requests": n,
        "client_in_flight": in_flight,
        "status_counts": counts,
        "ok": ok,
        "busy_503": counts.get("503", 0),
        "other": n - ok - counts.get("503", 0),
        "answered": sum(v for k, v in counts.items() if k.isdigit()),
        "wall_seconds": round(wall, 3),
        "ok_per_second": round(ok / wall, 2) if wall > 0 else None,
        "latency_ok_seconds": {
            "p50": round(float(np.percentile(lat, 50)), 3),
            "p95": round(float(np.percentile(lat, 95)), 3),
            "max": round(float(lat.max()), 3),
        },
    }


def start_server(args: argparse.Namespace, port: int, extra: tuple[str, ...] = ()) -> subprocess.Popen:
    """Start ``python -m nucleiseg.cli.serve`` on 127.0.0.1 (``extra``: more options) and wait until it answers."""
    cmd = [
        sys.executable, "-m", "nucleiseg.cli.serve", "--host", "127.0.0.1", "--port", str(port),
        "--model", args.model, "--max-concurrency", str(args.max_concurrency), "--max-queue", str(args.max_queue),
        "--log-level", "warning", *extra,
    ]
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1")
    log = tempfile.TemporaryFile(mode="w+")  # a file, not a pipe: a chatty server can never block on it
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            raise SystemExit(f"server exited with code {proc.returncode}: {log.read().strip()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    stop_server(proc)
    raise SystemExit("server did not answer /api/health within 120 s")


def stop_server(proc: subprocess.Popen) -> None:
    """Ask uvicorn to shut down (SIGINT), kill it after 10 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> None:
    """Parse arguments, run both phases against a fresh server, write and print the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="classical", help="model name or run folder (default classical)")
    parser.add_argument("--requests", type=int, default=50, help="uploads per phase (default 50)")
    parser.add_argument("--image", type=Path, default=REPO / "examples" / "fluo_small.png")
    parser.add_argument("--max-concurrency", type=int, default=2, help="server setting (default 2)")
    parser.add_argument("--max-queue", type=int, default=8, help="server setting (default 8)")
    parser.add_argument("--timeout", type=float, default=120.0, help="per-request timeout in seconds")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "serve_load.json")
    args = parser.parse_args()
    data = args.image.read_bytes()
    port = free_port()
    proc = start_server(args, port)
    sampler = RssSampler(proc.pid)
    url = f"http://127.0.0.1:{port}/api/segment"
    try:
        idle_rss = sampler.current()
        sampler.start()
        capacity = args.max_concurrency + args.max_queue
        phases = {
            "burst": asyncio.run(upload_all(url, data, args.image.name, args.requests, args.requests, args.timeout)),
            "bounded": asyncio.run(upload_all(url, data, args.image.name, args.requests, capacity, args.timeout)),
        }
        health = httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=5).json()
    finally:
        sampler.stop()
        stop_server(proc)
    result = {
        "model": health["model"],
        "image": args.image.name,
        "image_bytes": len(data),
        "server": {"max_concurrency": args.max_concurrency, "max_queue": args.max_queue, "in_flight_after": health["in_flight"]},
        "phases": phases,
        "none_lost": all(p["answered"] == p["requests"] for p in phases.values()),
        "server_rss_idle_mb": round(idle_rss / 2**20, 1),
        "server_rss_peak_mb": round(sampler.peak / 2**20, 1),
        "cpu_count": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "versions": versions(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(result, indent=2))
    print(f"model {result['model']}, image {args.image.name}, server max_concurrency={args.max_concurrency} max_queue={args.max_queue}")
    print(f"{'phase':<8} {'in flight':>9} {'200':>5} {'503':>5} {'other':>5} {'answered':>8} {'wall s':>7} {'ok/s':>6} {'p50 s':>6} {'p95 s':>6}")
    for name, p in phases.items():
        lat = p["latency_ok_seconds"]
        print(
            f"{name:<8} {p['client_in_flight']:>9} {p['ok']:>5} {p['busy_503']:>5} {p['other']:>5} "
            f"{p['answered']:>5}/{p['requests']:<2} {p['wall_seconds']:>7.2f} {p['ok_per_second'] or 0:>6.1f} {lat['p50']:>6.3f} {lat['p95']:>6.3f}"
        )
    print(f"server RSS: idle {result['server_rss_idle_mb']} MB, peak {result['server_rss_peak_mb']} MB; none lost: {result['none_lost']}")
    print(f"written: {args.out}")
    if not result["none_lost"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
