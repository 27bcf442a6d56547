"""Whole-pipeline CPU benchmark: images/s and milliseconds per stage, against a naive baseline.

Every configuration runs the full path of ``nucleiseg segment`` on real images cropped (or
mirror-tiled) to square sizes, stage by stage:

``read`` (decode the file) -> ``normalize`` -> ``network`` (tiled prediction) or ``tta``
(tiled prediction averaged over the 8 flips/rotations) -> ``estimate`` (the nucleus size
probe, for models with a size estimator; its cost on top of the native pass, which it reuses
when it views the whole image) -> ``watershed`` (probabilities to
labels) -> ``measurements`` (per-nucleus table) -> ``write`` (label TIFF + CSV, atomic).

The **baseline** is the seed work's pipeline measured in the same run on the same images and
weights: PyTorch eager fp32, one whole image at a time (no tiling), post-processing by a 0.5
threshold of the foreground probability and connected components (``skimage.measure.label``).
Speedups are ratios of images/s against it. Pipelines: ``torch`` (the Segmenter's PyTorch
predictor), ``onnx`` (ONNX Runtime fp32), ``onnx-int8`` (static int8), ``onnx-fp16``.
Images are segmented at native scale (``rescale`` off), so every configuration does one pass.
"""

from __future__ import annotations

import contextlib
import cProfile
import datetime as _dt
import io
import platform
import pstats
import statistics
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from nucleiseg.benchmark.images import default_images, prepare_images
from nucleiseg.benchmark.memory import PeakRSS, trim_heap
from nucleiseg.benchmark.runners import PIPELINES, STAGES, Runner, make_runner, snapshot
from nucleiseg.inference.pool import available_cpus

__all__ = ["BACKENDS", "format_table", "run_benchmark"]

BACKENDS = {"torch": ["torch"], "onnx": ["onnx"], "all": ["torch", "onnx", "onnx-int8"]}


def _measure(
    runners: dict[tuple[str, bool], Runner],
    images: list[dict[str, Any]],
    repeats: int,
) -> dict[tuple[str, bool], dict[str, Any]]:
    """Time every configuration on ``images``, interleaved repeat by repeat.

    Configurations take turns within each repeat, so a burst of load from other processes
    on a shared machine hits them alike; medians over repeats are reported. Memory is the
    process's peak resident size during a configuration's passes (warm-up included, as
    ONNX Runtime's arena keeps what it grew then), and its growth over the size at the start
    of a pass after freed heap pages went back to the system: the pipeline's working memory.
    """
    memory: dict[tuple[str, bool], tuple[int, int]] = {}
    for key, run in runners.items():
        trim_heap()
        with PeakRSS() as mem:  # warm-up: lazy allocations, ORT arenas, oneDNN kernel selection
            run(images[0]["path"])
        memory[key] = (mem.peak_bytes, mem.peak_bytes - mem.start_bytes)
    passes: dict[tuple[str, bool], list[dict[str, float]]] = {k: [] for k in runners}
    labels: dict[tuple[str, bool], list[np.ndarray]] = {}
    for _ in range(repeats):
        for key, run in runners.items():
            sums = dict.fromkeys(STAGES, 0.0)
            labels[key] = []
            trim_heap()
            with PeakRSS() as mem:
                for im in images:
                    times, lab = run(im["path"])
                    labels[key].append(lab)
                    for stage, sec in times.items():
                        sums[stage] += sec
            passes[key].append(sums)
            memory[key] = (max(memory[key][0], mem.peak_bytes), max(memory[key][1], mem.peak_bytes - mem.start_bytes))
    n = len(images)
    out = {}
    for key, reps in passes.items():
        total = statistics.median(sum(r.values()) for r in reps)
        ms = {st: round(1000 * statistics.median(r[st] for r in reps) / n, 2) for st in STAGES}
        out[key] = {
            "ips": n / total, "ms": ms | {"total": round(1000 * total / n, 2)}, "labels": labels[key],
            "peak_rss_mb": round(memory[key][0] / 2**20, 1), "rss_growth_mb": round(memory[key][1] / 2**20, 1),
        }
    return out


def _score(images: list[dict[str, Any]], labels: list[np.ndarray]) -> float | None:
    """Mean competition score over the images that have ground truth."""
    from nucleiseg.metrics import match_labels

    scores = [match_labels(im["gt"], lab).competition_score for im, lab in zip(images, labels, strict=True) if im["gt"] is not None]
    return float(np.mean(scores)) if scores else None


def _profile(fn: Callable[[], object], top: int = 15) -> list[str]:
    """cProfile ``fn``; the ``top`` functions by own time (header line first)."""
    prof = cProfile.Profile()
    prof.runcall(fn)
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).strip_dirs().sort_stats("tottime").print_stats(top)
    return [line.rstrip() for line in buf.getvalue().splitlines() if line.strip()][-top - 1 :]


def run_benchmark(
    images: str | Path | Sequence[str | Path] | None = None,
    model: str | Path = "default",
    backends: Sequence[str] | str = ("torch", "onnx"),
    sizes: Sequence[int] = (256, 1024),
    tta: bool = False,
    repeats: int = 3,
    max_images: int | None = 5,
    threads: int | None = None,
    profile: int = 0,
    calib_source: str | Path | None = None,
    tile: int | None = None,
    workers: int = 1,
) -> dict[str, Any]:
    """Benchmark the whole pipeline per backend and image size against the naive baseline.

    Parameters
    ----------
    images : path or list of paths, optional
        Image files/folders (ground truth found as by ``nucleiseg segment``); default: the
        repository's ``examples/`` or the DSB folder.
    model : str or Path
        Run folder or bundled model name (weights are shared by every pipeline).
    backends : sequence of str or "all"
        Pipelines besides the baseline: ``torch``, ``onnx``, ``onnx-int8``, ``onnx-fp16``.
    sizes : sequence of int
        Square image sides (real images centre-cropped or mirror-tiled to size).
    tta : bool
        Also run every backend with 8-fold test-time augmentation.
    repeats : int
        Timed passes over the images after one untimed warm-up image; medians are reported.
    max_images : int, optional
        Use at most this many source images.
    threads : int, optional
        Intra-op threads for PyTorch and ONNX Runtime (library defaults when None).
    profile : int
        cProfile this many images of the first size for every configuration (0: off).
    calib_source : path, optional
        Calibration images for the int8 export (default: the model's training data).
    tile : int, optional
        Tile side for the tiled pipelines (default: the model's ``infer.tile``).
    workers : int
        Above 1, every pipeline besides the baseline is also run by this many worker
        processes sharing the cores (:func:`nucleiseg.benchmark_pool.measure_pool`), as
        ``nucleiseg segment --workers`` does; those rows carry ``workers``.

    Returns
    -------
    dict
        ``settings``, ``machine``, ``model``, ``images`` and ``results``: one entry per
        (size, pipeline, tta) with ``images_per_s``, ``ms_per_image`` per stage and total,
        ``peak_rss_mb``, ``score`` (None without ground truth) and ``speedup`` over the baseline.
    """
    import onnxruntime
    import torch

    from nucleiseg.export.onnx import load_torch_model
    from nucleiseg.inference.segmenter import resolve_model_dir

    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    names = BACKENDS[backends] if isinstance(backends, str) and backends in BACKENDS else list([backends] if isinstance(backends, str) else backends)
    for name in names:
        if name not in PIPELINES[1:]:
            raise ValueError(f"unknown backend {name!r}; choose from {', '.join(PIPELINES[1:])} or all")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if tile is not None and tile < 1:
        raise ValueError(f"tile must be >= 1, got {tile}")
    if not sizes or any(int(s) < 1 for s in sizes):
        raise ValueError(f"sizes must be positive integers, got {list(sizes)}")
    sizes = [int(s) for s in sizes]
    source_folder = resolve_model_dir(model)
    source = images if images is not None else default_images(source_folder)
    sources = [source] if isinstance(source, (str, Path)) else list(source)
    with _torch_threads(threads), tempfile.TemporaryDirectory(prefix="nucleiseg-bench-") as tmp:
        work = Path(tmp)
        # Every pipeline loads this snapshot: a training run rewriting the weights meanwhile
        # cannot make the pipelines compare different models.
        folder = snapshot(source_folder, work / "model")
        _, bundle, _, weights_hash = load_torch_model(folder)
        infer = bundle.infer if tile is None else replace(bundle.infer, tile=tile)
        prepared = prepare_images(sources, sizes, work / "in", max_images)
        (work / "out").mkdir()
        result: dict[str, Any] = {
            "date": _dt.datetime.now().isoformat(timespec="seconds"),
            "model": {"path": str(source_folder), "name": bundle.name, "arch": bundle.model.arch,
                      "params": bundle.model.params, "weights_hash": weights_hash},
            "machine": {
                "platform": platform.platform(), "cpus": available_cpus(), "torch": torch.__version__,
                "torch_threads": torch.get_num_threads(), "onnxruntime": onnxruntime.__version__,
                "ort_threads": threads or "default",
            },
            "settings": {"repeats": repeats, "sizes": sizes, "tta": tta, "backends": names, "workers": workers,
                         "infer": {"tile": infer.tile, "overlap": infer.overlap, "batch_size": infer.batch_size, "rescale": False}},
            "images": {"source": [str(s) for s in sources], "ids": [im["id"] for im in prepared[sizes[0]]],
                       "ground_truth": sum(im["gt"] is not None for im in prepared[sizes[0]])},
            "results": [],
            "profile": {},
        }
        configs = [("baseline", False)] + [(n, False) for n in names] + ([(n, True) for n in names] if tta else [])
        runners = {
            (name, use_tta): make_runner(name, folder, use_tta, infer, work, threads, calib_source, weights_hash)
            for name, use_tta in configs
        }
        for size in sizes:
            ims = prepared[size]
            stats = {(name, use_tta, 1): st for (name, use_tta), st in _measure(runners, ims, repeats).items()}
            if workers > 1:
                from nucleiseg.benchmark.pool import measure_pool

                for name, use_tta in configs[1:]:
                    stats[name, use_tta, workers] = measure_pool(
                        name, folder, use_tta, infer, work, weights_hash, ims, repeats, workers, available_cpus()
                    )
            base = stats["baseline", False, 1]["ips"]
            for (name, use_tta, n_workers), st in stats.items():
                result["results"].append({
                    "size": size, "pipeline": name, "tta": use_tta, "workers": n_workers, "images": len(ims),
                    "images_per_s": round(st["ips"], 3), "ms_per_image": st["ms"],
                    "peak_rss_mb": st["peak_rss_mb"], "rss_growth_mb": st["rss_growth_mb"],
                    "score": _score(ims, st["labels"]), "speedup": round(st["ips"] / base, 3),
                })
                if profile and size == sizes[0] and n_workers == 1:
                    run = runners[name, use_tta]
                    key = f"{name}{'+tta' if use_tta else ''}@{size}"
                    result["profile"][key] = _profile(lambda run=run: [run(im["path"]) for im in ims[:profile]])
        return result


@contextlib.contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    """Set PyTorch's intra-op threads for the block (unchanged when None), then restore them."""
    import torch

    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)



def format_table(result: dict[str, Any]) -> str:
    """The benchmark results as a fixed-width text table."""
    head = ["size", "pipeline", "img/s", "x base", "score", "MB"] + [s[:7] for s in STAGES] + ["total"]
    rows = [head]
    for r in result["results"]:
        ms = r["ms_per_image"]
        rows.append([
            str(r["size"]), r["pipeline"] + ("+tta" if r["tta"] else "") + (f" x{r['workers']}" if r.get("workers", 1) > 1 else ""), f"{r['images_per_s']:.2f}",
            "-" if r["speedup"] is None else f"{r['speedup']:.2f}", "-" if r["score"] is None else f"{r['score']:.3f}",
            "-" if r["peak_rss_mb"] is None else f"{r['peak_rss_mb']:.0f}", *[f"{ms[s]:.0f}" for s in STAGES], f"{ms['total']:.0f}",
        ])
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(c.rjust(w) if i != 1 else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))) for row in rows]
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:], "(ms per image by stage; speedup = images/s over the baseline of the same size)"])
