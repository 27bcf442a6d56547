"""Whole commands as users run them: a fresh process per run, process start and model load included."""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["baseline_command", "run_command", "score_folder", "segment_command"]


def segment_command(inputs: Sequence[str | Path], out: Path, model: str | Path, backend: str, extra: Sequence[str] = ()) -> list[str]:
    """``nucleiseg segment INPUTS -o OUT [EXTRA]``: the default command (the console script's module, this Python)."""
    cmd = [sys.executable, "-m", "nucleiseg.cli.main", "segment", *map(str, inputs), "-o", str(out), "--quiet",
           "--model", str(model)]
    if backend != "auto":
        cmd += ["--backend", backend]
    return cmd + list(extra)


def baseline_command(inputs: Sequence[str | Path], out: Path, model: str | Path) -> list[str]:
    """The naive baseline as a command (:mod:`nucleiseg.benchmark.baseline`), label images only like ``segment``'s default."""
    return [sys.executable, "-m", "nucleiseg.benchmark.baseline", *map(str, inputs), "-o", str(out), "--model", str(model), "--no-measure"]


def run_command(cmd: list[str], out: Path, repeats: int, threads: int | None = None) -> dict[str, Any]:
    """Run ``cmd`` ``repeats`` times into a fresh ``out``; the median wall time and every run's.

    ``threads`` sets ``OMP_NUM_THREADS`` for the child (None: the machine's default).

    Raises
    ------
    RuntimeError
        When the command fails (its last stderr line).
    """
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    walls = []
    for _ in range(repeats):
        shutil.rmtree(out, ignore_errors=True)
        t = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        walls.append(time.perf_counter() - t)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"{' '.join(cmd[2:5])} ... exited with {done.returncode}: {last}")
    return {"seconds": round(statistics.median(walls), 3), "runs": [round(w, 3) for w in walls]}


def score_folder(truth: Path, predictions: Path) -> float | None:
    """Competition score (macro mean over images) of an output folder, as ``nucleiseg evaluate`` gives it."""
    from nucleiseg.api import evaluate_paths

    try:
        report = evaluate_paths(truth, predictions)
    except FileNotFoundError:
        return None
    return float(report.summary["score_macro"])
