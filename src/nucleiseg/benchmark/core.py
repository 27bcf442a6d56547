"""Speed benchmark of what users run, on real images, against the naive baseline of the same run.

Two measurements per image set and pipeline:

``segment`` (in process)
    The per-image step of ``nucleiseg segment`` (:func:`nucleiseg.benchmark.runners.make_runner`:
    read, normalise, size estimate, predict, post-process, write the label TIFF and the
    measurements), timed stage by stage after one warm-up image, passes interleaved between
    pipelines so a burst of load from elsewhere hits them alike; medians over ``repeats``.
``command`` (whole command)
    ``nucleiseg segment IMAGES -o OUT`` (the default command) run as a fresh process
    (:mod:`nucleiseg.benchmark.command`): process start, imports, model load, every image,
    ``run.json``. This is the figure users feel. The baseline runs as its own command too; the
    pipelines take turns run by run, and the command's speed-up is the median over rounds of the
    baseline's time over the pipeline's in the same round (robust to the machine slowing down).

The **baseline** (:mod:`nucleiseg.benchmark.baseline`) is the seed work's pipeline on the same
weights: PyTorch eager fp32, the whole image at once, threshold + connected components, plain
``regionprops``. Speedups are ratios against it, measured in the same run on the same images.
Default image sets: the model's DSB validation split as it is (mixed sizes, 256² to 1272x603)
and the repository's ``examples/``; ``sizes`` adds square crops as extra rows. Scores are the
competition score of each pipeline's labels against the ground truth.
"""

from __future__ import annotations

import datetime as _dt
import platform
import statistics
import tempfile
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nucleiseg.benchmark.command import baseline_command, run_command, score_folder, segment_command
from nucleiseg.benchmark.images import prepare_images, single_image, validation_set
from nucleiseg.benchmark.memory import PeakRSS, trim_heap
from nucleiseg.benchmark.runners import PIPELINES, STAGES, Runner, make_runner

if TYPE_CHECKING:
    from nucleiseg.bundle import ModelBundle

__all__ = ["format_table", "run_benchmark"]

REPO = Path(__file__).resolve().parents[3]


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _image_sets(images: Sequence[str | Path] | None, folder: Path, work: Path, sizes: Sequence[int],
                max_images: int | None, data: str | Path | None) -> dict[str, Path]:
    """``{set name: folder}``: the given images, or the validation split and ``examples/``; plus square crops."""
    sets: dict[str, Path] = {}
    if images:
        for k, src in enumerate(images):
            sets[Path(src).name or f"images{k}"] = Path(src)
    else:
        val = validation_set(folder, work, data, max_images)
        if val is not None:
            sets["dsb_val"] = val
        if (REPO / "examples").is_dir():
            sets["examples"] = REPO / "examples"
    if not sets:
        raise FileNotFoundError("no images to benchmark: give --images")
    first = next(iter(sets.values()))
    for size in sizes:
        prepare_images(first, [size], work / f"square_{size}", max_images)
        sets[f"{size}x{size}"] = work / f"square_{size}"
    return sets


def _in_process(runners: dict[str, Runner], items: list[Any], out: Path, repeats: int) -> dict[str, dict[str, Any]]:
    """Per pipeline: images/s, ms per image by stage, peak memory and the labels (see the module notes)."""
    from nucleiseg.io.labels import load_item_gt
    from nucleiseg.metrics import match_labels

    passes: dict[str, list[dict[str, float]]] = {k: [] for k in runners}
    labels: dict[str, list[np.ndarray]] = {}
    peak: dict[str, int] = dict.fromkeys(runners, 0)
    for name, run in runners.items():
        run(items[0], out)  # warm-up: lazy allocations, ONNX Runtime arenas, kernel selection
    for _ in range(repeats):
        for name, run in runners.items():
            sums = dict.fromkeys(STAGES, 0.0)
            labels[name] = []
            trim_heap()
            with PeakRSS() as mem:
                for item in items:
                    times, lab = run(item, out)
                    labels[name].append(lab)
                    for stage in STAGES:
                        sums[stage] += times.get(stage, 0.0)
            peak[name] = max(peak[name], mem.peak_bytes)
            passes[name].append(sums)
    truth = [load_item_gt(item) if item.gt_path is not None else None for item in items]
    results = {}
    for name, reps in passes.items():
        total = statistics.median(sum(r.values()) for r in reps)
        scores = [match_labels(t, lab).competition_score for t, lab in zip(truth, labels[name], strict=True) if t is not None]
        results[name] = {
            "images_per_s": round(len(items) / total, 3),
            "ms_per_image": {st: round(1000 * statistics.median(r[st] for r in reps) / len(items), 1) for st in STAGES}
            | {"total": round(1000 * total / len(items), 1)},
            "peak_rss_mb": round(peak[name] / 2**20, 1),
            "score": round(float(np.mean(scores)), 4) if scores else None,
            "labels": labels[name],
        }
    return results


def _commands(folder: Path, names: Sequence[str], model: str | Path, work: Path, repeats: int, threads: int | None,
              n_images: int) -> dict[str, dict[str, Any]]:
    """Per pipeline: the whole command's wall time, images/s, speed-up and the score of what it wrote.

    The pipelines take turns (round ``r`` runs each once), so a slow spell of the machine hits
    all of them alike; ``speedup`` is the median over rounds of the baseline's time divided by
    the pipeline's in the same round (``speedup_runs``), ``seconds`` the median of its runs.
    """
    cmds = {}
    for name in names:
        out = work / "command_out" / name
        cmds[name] = (baseline_command([folder], out, model) if name == "baseline" else segment_command([folder], out, model, name), out)
    walls: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(repeats):
        for name, (cmd, out) in cmds.items():
            walls[name] += run_command(cmd, out, 1, threads)["runs"]
    results = {}
    for name, (_, out) in cmds.items():
        seconds = statistics.median(walls[name])
        ratios = [b / w for b, w in zip(walls.get("baseline", walls[name]), walls[name], strict=True)]
        results[name] = {"seconds": round(seconds, 3), "runs": walls[name], "images_per_s": round(n_images / seconds, 3),
                         "score": score_folder(folder, out), "speedup": round(statistics.median(ratios), 3),
                         "speedup_runs": [round(r, 3) for r in ratios]}
    return results


def run_benchmark(
    images: Sequence[str | Path] | None = None, model: str | Path = "default", backends: Sequence[str] = ("auto", "torch"),
    repeats: int = 3, threads: int | None = None, sizes: Sequence[int] = (), max_images: int | None = None,
    command: bool = True, data: str | Path | None = None,
) -> dict[str, Any]:
    """Benchmark ``nucleiseg segment`` per backend against the naive baseline, in process and as a command.

    Parameters
    ----------
    images : sequence of paths, optional
        Folders (or files) of images, each one set; ground truth found as ``nucleiseg segment``
        finds it. Default: the model's DSB validation split and ``examples/``.
    model : str or Path
        Bundled model name or run folder (the baseline uses its weights).
    backends : sequence of str
        Pipelines besides the baseline (:data:`~nucleiseg.benchmark.runners.PIPELINES`; ``auto``
        is the default command).
    repeats : int
        Timed passes (in process) and runs (command); medians are reported.
    threads : int, optional
        Intra-op threads of the network runtimes (library defaults when None).
    sizes : sequence of int
        Extra sets: the first set's images cropped or mirror-tiled to these square sides.
    max_images : int, optional
        At most this many images per set.
    command : bool
        Also time the whole commands (the default ``nucleiseg segment FOLDER -o OUT``: label images and
        ``run.json``; the baseline writes label images too) and one 256 x 256 image end to end.
    data : path, optional
        The DSB folder of the validation split (default: the model's training data).

    Returns
    -------
    dict
        ``date``, ``model``, ``machine``, ``settings``, ``sets`` and ``rows``: one per (set, mode,
        pipeline) with ``images_per_s``, ``score``, ``speedup`` over the baseline of the same set
        and mode, and per-stage ``ms_per_image`` (in process) or ``seconds`` (command); and
        ``one_image`` (seconds of ``nucleiseg segment`` on one 256 x 256 image, process included).
    """
    from nucleiseg.bundle import ModelBundle

    _check_settings(backends, repeats, threads)
    bundle = ModelBundle.open(model)
    if bundle.folder is None:
        raise ValueError(f"{model}: the benchmark needs a model folder (the baseline runs its weights)")
    names = ["baseline", *backends]
    result = _header(bundle, repeats, threads, backends, sizes)
    with tempfile.TemporaryDirectory(prefix="nucleiseg-bench-") as tmp:
        work = Path(tmp)
        sets = _image_sets(images, bundle.folder, work, sizes, max_images, data)
        runners = {name: make_runner(name, bundle.folder if name == "baseline" else model, threads) for name in names}
        for set_name, folder in sets.items():
            _bench_set(result, set_name, folder, runners, model, work, repeats, threads, command)
        if command:
            result["one_image"] = _one_image(next(iter(sets.values())), model, backends[0], work, repeats, threads)
    return result


def _check_settings(backends: Sequence[str], repeats: int, threads: int | None) -> None:
    """Refuse ``repeats < 1``, an unknown backend or ``threads < 1``."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for name in backends:
        if name not in PIPELINES[1:]:
            raise ValueError(f"unknown backend {name!r}; choose from {', '.join(PIPELINES[1:])}")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")


def _header(bundle: ModelBundle, repeats: int, threads: int | None, backends: Sequence[str], sizes: Sequence[int]) -> dict[str, Any]:
    """The result before any measurement: date, model, machine and settings, no sets or rows yet."""
    from nucleiseg.inference.executors import available_cpus

    return {
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "model": {"name": bundle.name, "path": str(bundle.folder), "arch": bundle.config.model.arch,
                  "params": bundle.config.model.params, "weights_hash": bundle.weights_hash},
        "machine": {"platform": platform.platform(), "cpus": available_cpus(), "python": platform.python_version(),
                    **{lib: _version(lib) for lib in ("torch", "onnxruntime", "numpy", "scikit-image")}},
        "settings": {"repeats": repeats, "threads": threads or "default", "backends": list(backends), "sizes": list(sizes)},
        "sets": {}, "rows": [], "one_image": None,
    }


def _bench_set(result: dict[str, Any], set_name: str, folder: Path, runners: dict[str, Runner], model: str | Path,
               work: Path, repeats: int, threads: int | None, command: bool) -> None:
    """Measure one image set: its entry in ``result["sets"]`` and its rows (in process, then as commands)."""
    from nucleiseg.io.labels import discover_inputs

    items = discover_inputs([folder])
    if not items:
        raise FileNotFoundError(f"{folder}: no images")
    out = work / "out" / set_name
    out.mkdir(parents=True)
    result["sets"][set_name] = {"folder": str(folder), "images": len(items), "ground_truth": sum(i.gt_path is not None for i in items)}
    stats = _in_process(runners, items, out, repeats)
    names = list(runners)
    for name in names:
        st = stats[name]
        result["rows"].append({"set": set_name, "mode": "segment", "pipeline": name, "images": len(items),
                               **{k: v for k, v in st.items() if k != "labels"},
                               "speedup": round(st["images_per_s"] / stats["baseline"]["images_per_s"], 3)})
    if command and not set_name[0].isdigit():
        cmds = _commands(folder, names, model, work, repeats, threads, len(items))
        for name in names:
            result["rows"].append({"set": set_name, "mode": "command", "pipeline": name, "images": len(items), **cmds[name]})


def _one_image(folder: Path, model: str | Path, pipeline: str, work: Path, repeats: int, threads: int | None) -> dict[str, Any]:
    """``nucleiseg segment`` on one 256 x 256 image of ``folder``, process included."""
    one = single_image(folder, work)
    out = work / "one_out"
    return {"size": [256, 256], "pipeline": pipeline, "command": "nucleiseg segment IMAGE -o OUT",
            **run_command(segment_command([one], out, model, pipeline), out, repeats, threads)}


def format_table(result: dict[str, Any]) -> str:
    """The benchmark rows as a fixed-width text table."""
    head = ["set", "mode", "pipeline", "img/s", "x base", "score", *[s[:8] for s in STAGES], "total ms"]
    rows = [head]
    for r in result["rows"]:
        ms = r.get("ms_per_image")
        stage = [f"{ms[s]:.0f}" for s in STAGES] if ms else ["-"] * len(STAGES)
        total = f"{ms['total']:.0f}" if ms else f"{1000 * r['seconds'] / r['images']:.0f}"
        rows.append([r["set"], r["mode"], r["pipeline"], f"{r['images_per_s']:.2f}", f"{r['speedup']:.2f}",
                     "-" if r["score"] is None else f"{r['score']:.4f}", *stage, total])
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))) for row in rows]
    notes = ["(segment: the per-image step in process, ms per image by stage; command: whole `nucleiseg segment` "
             "process as users run it; x base: images/s over the naive baseline of the same set and mode)"]
    if result.get("one_image"):
        notes.append(f"one 256x256 image, whole command: {result['one_image']['seconds']:.2f} s")
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:], *notes])
