"""Throughput of a benchmark pipeline run by a pool of worker processes (``--workers N``).

Each worker builds the same pipeline as the serial benchmark (``nucleiseg.benchmark.runners.make_runner``)
with ``cores // N`` threads, warms up on one image, then all workers share the timed images;
throughput is the number of images over the wall time of the whole pool, which is what
``nucleiseg segment --workers N`` gives a user with a folder of images.

Each timed pass submits the benchmark images ``N`` times over, so that every worker has work
until the end: with only five images and two workers, one worker would do three while the
other idles, and the figure would measure that idle time rather than the steady throughput
of a large folder.
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from nucleiseg.benchmark.runners import STAGES, make_runner

__all__ = ["measure_pool"]

_STATE: dict[str, Any] = {}


def _init(name: str, folder: Path, tta: bool, infer: Any, work: Path, threads: int, weights_hash: str, barrier: Any) -> None:
    import torch

    torch.set_num_threads(threads)
    _STATE["run"] = make_runner(name, folder, tta, infer, work, threads, None, weights_hash)
    _STATE["barrier"] = barrier


def _warm(path: Path) -> None:
    _STATE["run"](path)
    _STATE["barrier"].wait()  # every worker warms up once before the clock starts


def _timed(path: Path) -> tuple[dict[str, float], np.ndarray, int, int]:
    times, labels = _STATE["run"](path)
    return times, labels, os.getpid(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def measure_pool(
    name: str, folder: Path, tta: bool, infer: Any, work: Path, weights_hash: str,
    images: list[dict[str, Any]], repeats: int, workers: int, cores: int,
) -> dict[str, Any]:
    """Images/s of ``workers`` processes over ``repeats`` passes of ``images`` (each ``workers`` times).

    Returns the same fields as the serial measurement: ``ips``, per-stage ``ms`` (medians of
    the per-image stage times, so they show each image's cost inside a worker), ``labels`` of
    the last pass, and ``peak_rss_mb`` summed over the workers.
    """
    context = multiprocessing.get_context("spawn")
    threads = max(1, cores // workers)
    walls: list[float] = []
    stage_times: list[dict[str, float]] = []
    labels: list[np.ndarray] = []
    rss: dict[int, int] = {}
    with context.Manager() as manager:
        args = (name, folder, tta, infer, work, threads, weights_hash, manager.Barrier(workers))
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_init, initargs=args) as pool:
            list(pool.map(_warm, [images[0]["path"]] * workers))
            stream = [im["path"] for im in images] * workers  # one pass: every image once per worker
            for _ in range(repeats):
                start = time.perf_counter()
                results = list(pool.map(_timed, stream))
                walls.append(time.perf_counter() - start)
                stage_times += [r[0] for r in results]
                labels = [r[1] for r in results[-len(images):]]
                for r in results:
                    rss[r[2]] = max(rss.get(r[2], 0), r[3])
    n = len(images) * workers
    wall = statistics.median(walls)
    ms = {k: round(1000 * statistics.median(t.get(k, 0.0) for t in stage_times), 2) for k in STAGES}
    return {
        "ips": n / wall, "ms": ms | {"total": round(1000 * wall / n, 2)}, "labels": labels,
        "peak_rss_mb": round(sum(rss.values()) / 1024, 1), "rss_growth_mb": None,
    }
