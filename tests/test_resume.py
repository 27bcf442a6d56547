"""SIGTERM in the middle of ``nucleiseg segment``, then ``--resume``: the same files as a clean run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from conftest import disk_labels
from nucleiseg.io.images import read_labels

REPO = Path(__file__).resolve().parents[1]


def _images(folder: Path, count: int) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(1)
    for k in range(count):
        labels = disk_labels((384, 384), [tuple(rng.uniform(20, 364, 2)) for _ in range(40)], 9)
        Image.fromarray(np.where(labels > 0, 180, 25).astype(np.uint8)).save(folder / f"im{k:02d}.png")
    return folder


def _command(src: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "nucleiseg.cli.main", "segment", str(src), "-o", str(out), "--model", "classical",
            "--overlay", "--quiet", *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO / "src")}


def _masks(out: Path) -> dict[str, np.ndarray]:
    return {p.name: read_labels(p) for p in sorted(out.glob("*_masks.tif"))}


def test_sigterm_mid_run_then_resume_equals_a_clean_run(tmp_path: Path) -> None:
    src = _images(tmp_path / "in", 24)
    clean, out = tmp_path / "clean", tmp_path / "out"
    subprocess.run(_command(src, clean), env=_env(), check=True, capture_output=True)

    proc = subprocess.Popen(_command(src, out), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(out.glob("*_masks.tif")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, (proc.returncode, stderr)
    assert stderr.strip().splitlines()[-1].startswith("terminated: finished outputs are complete"), stderr
    assert "Traceback" not in stderr
    done = len(list(out.glob("*_masks.tif")))
    assert 0 < done < 24, done  # stopped in the middle
    assert not [p.name for p in out.iterdir() if ".tmp" in p.name]  # the current write finished or was discarded

    (out / ".im05_overlay.k3j2h1g0.tmp.png").write_bytes(b"half")  # what a SIGKILL leaves
    resumed = subprocess.run(_command(src, out, "--resume"), env=_env(), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert f"24 images segmented ({done} resumed)" in resumed.stdout
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in clean.iterdir())
    first, second = _masks(clean), _masks(out)
    assert all(np.array_equal(first[name], second[name]) for name in first)
    record = json.loads((out / "run.json").read_text())
    assert [r["id"] for r in record["images"]] == [f"im{k:02d}" for k in range(24)]
