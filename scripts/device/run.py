"""Train the GPU recipes on the lent device machine (issue 15), from the repository root there.

``python3 scripts/device/run.py smoke`` installs the carried wheels (``.whl``, the packages the
machine's image lacks), unpacks whatever ``pack.py`` folders travelled (``unpack.py``) and runs
every recipe for a few steps; ``python3 scripts/device/run.py train`` runs them for real, side
by side on the one GPU (each with ``WORKERS`` crop processes, default 7, for ``MINUTES``,
default the recipe's; ``RECIPES``, comma-separated, names other recipes), and leaves one ``<run>.tar`` per run in ``$OUT`` (weights, configs,
split, report, metrics, log). BBBC039 joins the training data when its part was unpacked on
this machine (by this call or an earlier one, into ``DATA`` under /tmp, which a warm machine
keeps).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

RECIPES = os.environ.get("RECIPES", "configs/default_gpu.yaml,configs/unet32_gpu.yaml").split(",")
#: Outside the repository: a warm machine kept /tmp between calls (the carried wheels' install was
#: found again) but not the repository's ignored folders (data unpacked there in one call was gone
#: in the next), so each part unpacked here survives for the next call while the machine is warm.
DATA = Path(os.environ.get("DEVDATA", "/tmp/devdata"))
SITE = Path("/tmp/site")


def sh(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    print("+", " ".join(cmd), flush=True)
    return subprocess.run(cmd, check=True, **kw)


def install_wheels() -> None:
    """Install the carried wheels once per machine (albumentations and what it needs)."""
    try:
        import albumentations  # noqa: F401  (already there: nothing to install)

        return
    except ImportError:
        pass
    if not (SITE / "albumentations").exists():
        wheels = sorted(str(p) for p in Path(".whl").glob("*.whl"))
        sh([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
            "--no-cache-dir", "--upgrade", "--target", str(SITE), *wheels])


def unpack_parts() -> None:
    """Unpack each travelled part or shard once (a marker file records it)."""
    DATA.mkdir(parents=True, exist_ok=True)
    for pack in sorted(Path(".").glob(".devpack_*")):
        marker = DATA / f"{pack.name}.done"
        if (pack / "manifest.json").exists() and not marker.exists():
            dest = DATA / "smoke" if pack.name == ".devpack_smoke" else DATA
            sh([sys.executable, "scripts/device/unpack.py", str(pack), str(dest)])
            marker.write_text((pack / "manifest.json").read_text())


def unpacked(part: str) -> tuple[int, int]:
    """Images of ``part`` unpacked on this machine so far, and how many the whole part has."""
    manifests = [json.loads(m.read_text()) for m in DATA.glob(".devpack_*.done") if m.read_text().strip()]
    mine = [m for m in manifests if m["part"] == part and "total" in m]
    return sum(len(m["entries"]) for m in mine), max((m["total"] for m in mine), default=0)


def recipe(path: str, smoke: bool) -> Path:
    """The recipe with this machine's data paths (and tiny sizes for the smoke run)."""
    import yaml

    cfg = yaml.safe_load(Path(path).read_text())
    root = DATA / "smoke" if smoke else DATA
    cfg["data"] = str(root / "dsb2018" / "stage1_train")
    bbbc = DATA / "bbbc039"
    have, total = unpacked("dsb")
    if not smoke and have < total:
        raise SystemExit(f"only {have} of {total} DSB images unpacked here: carry the other shards first")
    if (bbbc / "images").is_dir():
        for extra in cfg.get("extra_data", []):
            extra["path"] = str(bbbc)
    else:
        print(f"{path}: BBBC039 was not unpacked here; training without it", flush=True)
        cfg["extra_data"] = []
    if smoke:
        cfg.update(steps_per_epoch=10, epochs=3, val_max_images=2, max_minutes=0.05)
        cfg["out"] = cfg["out"] + "_smoke"
    elif os.environ.get("MINUTES"):
        cfg["max_minutes"] = float(os.environ["MINUTES"])
    cfg["workers"] = int(os.environ.get("WORKERS", cfg.get("workers", 7)))
    out = Path("/tmp") / Path(path).name
    out.write_text(yaml.safe_dump(cfg))
    return out


def pack_run(run: Path, log: Path, dest: Path) -> None:
    """One tar per run: everything but the resume state (and the best epoch of large models)."""
    with tarfile.open(dest / f"{run.name}.tar", "w") as tar:
        for f in sorted(run.iterdir()):
            if f.name == "last.safetensors" or (f.name == "best.safetensors" and f.stat().st_size > 4e6):
                continue
            if f.name == "average.safetensors" and (run / "report.json").exists():
                continue
            tar.add(f, arcname=f"{run.name}/{f.name}")
        tar.add(log, arcname=f"{run.name}/train.log")


def main() -> int:
    mode = sys.argv[1] if len(sys.argv) > 1 else "train"
    out = Path(os.environ.get("OUT", "/tmp/out"))
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    install_wheels()
    env = dict(os.environ, PYTHONPATH=f"{Path('src').resolve()}:{SITE}", PYTHONUNBUFFERED="1")
    sh([sys.executable, "-c", "import os, torch, albumentations; print(torch.__version__, torch.cuda.is_available() and "
        "torch.cuda.get_device_name(0), albumentations.__version__, os.cpu_count())"], env=env)
    unpack_parts()
    print(f"ready after {time.monotonic() - t0:.0f} s", flush=True)
    smi = None
    if shutil.which("nvidia-smi"):
        smi = subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader", "-l", "15"],
                               stdout=open(out / "gpu.log", "w"), stderr=subprocess.STDOUT)
    device = os.environ.get("DEVICE", "cuda")
    limit = float(os.environ.get("LIMIT_S", 520))
    procs = []
    import yaml  # after install_wheels: the machine's own PyYAML

    for path in RECIPES:
        cfg = recipe(path, smoke=(mode == "smoke"))
        run = Path(yaml.safe_load(cfg.read_text())["out"])
        log = Path("/tmp") / f"{run.name}.log"
        cmd = [sys.executable, "-m", "nucleiseg.cli.main", "train", "--config", str(cfg), "--device", device, "--quiet"]
        print("+", " ".join(cmd), flush=True)
        procs.append((run, log, subprocess.Popen(cmd, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)))
    failed = 0
    for run, log, proc in procs:
        try:
            rc = proc.wait(timeout=max(10.0, limit - (time.monotonic() - t0)))
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = "killed at the time limit"
        print(f"{run}: exit {rc}; last lines of {log}:\n" + "".join(log.read_text().splitlines(True)[-8:]), flush=True)
        metrics = run / "metrics.csv"
        if metrics.exists():
            print(metrics.read_text(), flush=True)
        if (run / "report.json").exists():
            report = json.loads((run / "report.json").read_text())
            print(json.dumps({k: report.get(k) for k in ("epochs_run", "train_seconds", "best_val_score", "weights")}), flush=True)
        failed += rc != 0
        if run.exists():
            pack_run(run, log, out)
    if smi is not None:
        smi.terminate()
    print(f"done after {time.monotonic() - t0:.0f} s", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
