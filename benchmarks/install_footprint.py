"""What an install costs: the core (no PyTorch) beside ``nucleiseg[train]``.

For each of the two installs it builds a brand-new virtual environment, installs the project
(not editable, so the package itself is counted) with the committed constraints
(``requirements/ci.txt``), and measures the install's wall time, the size of what it downloads
(``pip download`` of the same: the wheels), the virtual environment's size
on disk, the packages it holds, and the whole-command time of ``nucleiseg segment`` on one
example image (median of 3 runs; the first run of a fresh environment, which compiles byte code,
is reported apart), each as wall seconds and as CPU seconds. Both installs take the same wheels
from the same places (on the machine the result was taken on: a local package mirror and a warm
pip cache, so the install times are a lower bound of a download over a network). Times depend on what else the machine runs: the result records
the load average::

    python benchmarks/install_footprint.py     # writes results/install_footprint.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IMAGE = REPO / "examples" / "fluo_small.png"
INSTALLS = {"core": ".", "train": ".[train]"}


def folder_mb(path: Path) -> float:
    """Size on disk of the files under ``path`` in MB."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink()) / 1e6


def timed(cmd: list[str], cwd: Path) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user + system, children included) of ``cmd`` (it must succeed).

    The CPU seconds hardly depend on what else the machine runs; the wall seconds do.
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def measure(name: str, target: str, work: Path) -> dict:
    """Install ``target`` into a new venv under ``work`` and measure it."""
    venv = work / name
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "-c", str(REPO / "requirements" / "ci.txt")]
    install_s, install_cpu = timed([*pip, target], REPO)
    wheels = work / f"{name}_wheels"
    subprocess.run([*pip[:3], "download", "-q", "-c", str(REPO / "requirements" / "ci.txt"), "-d", str(wheels), target],
                   cwd=REPO, check=True, capture_output=True, text=True)
    freeze = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "freeze"], check=True, capture_output=True, text=True)
    packages = [line for line in freeze.stdout.splitlines() if "==" in line]
    segment = [str(venv / "bin" / "nucleiseg"), "segment", str(IMAGE), "-o", str(work / f"{name}_out"), "--quiet"]
    first_s, first_cpu = timed(segment, work)
    runs = [timed(segment, work) for _ in range(3)]
    has_torch = any(p.lower().startswith("torch==") for p in packages)
    return {
        "install": target, "install_s": round(install_s, 1), "install_cpu_s": round(install_cpu, 1),
        "download_mb": round(folder_mb(wheels), 1), "venv_mb": round(folder_mb(venv), 1), "packages": len(packages),
        "torch": has_torch,
        "segment_one_image_first_s": round(first_s, 2), "segment_one_image_first_cpu_s": round(first_cpu, 2),
        "segment_one_image_s": round(statistics.median(w for w, _ in runs), 2),
        "segment_one_image_cpu_s": round(statistics.median(c for _, c in runs), 2),
    }


def main(argv: list[str] | None = None) -> int:
    """Measure both installs and write the JSON result."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "install_footprint.json"))
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="nucleiseg_install_"))
    try:
        results = {name: measure(name, target, work) for name, target in INSTALLS.items()}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    record = {
        "command": "python benchmarks/install_footprint.py",
        "python": platform.python_version(), "machine": platform.machine(), "image": IMAGE.name,
        "load_average_1min_at_end": round(os.getloadavg()[0], 2), "cpus": os.cpu_count(),
        "results": results,
    }
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    for name, r in results.items():
        print(f"{name:6s} install {r['install_s']:6.1f} s ({r['install_cpu_s']:.1f} CPU s)  download {r['download_mb']:.0f} MB  "
              f"venv {r['venv_mb']:7.1f} MB  "
              f"{r['packages']:3d} packages  segment one image {r['segment_one_image_s']:.2f} s "
              f"({r['segment_one_image_cpu_s']:.2f} CPU s; first {r['segment_one_image_first_s']:.2f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
