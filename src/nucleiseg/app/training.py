"""Training from the web app: fine-tuning a model or training a recipe from scratch, in a child process.

By default a job fine-tunes a model (``start_from``: a bundled model or a finished run) on the
dataset: it runs ``nucleiseg train --from PARENT --data DATASET --max-minutes M --out RUN``,
which also tunes the thresholds, scores the parent on the same held-out images and writes the
model card; the command shown on the page is that command. Only ``start_from="scratch"`` trains
the chosen recipe from random weights: the job writes the effective recipe to
``RUN/recipe.yaml``, runs ``nucleiseg train --config RUN/recipe.yaml --out RUN``, then ``nucleiseg
validate RUN --tune`` and writes ``RUN/MODEL_CARD.md`` (:func:`nucleiseg.app.runs.write_model_card`).

Children run in their own process group at a lower CPU priority (the web server stays
responsive); stopping sends SIGINT, then SIGKILL. Progress comes from ``RUN/progress.jsonl``, the
structured events the trainer writes (:mod:`nucleiseg.training.progress`).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from nucleiseg.app.datasets import Dataset, stage_for_training
from nucleiseg.app.jobs import Job, JobFailed
from nucleiseg.app.limits import api_error, scrub
from nucleiseg.app.runs import read_history, write_app_record, write_model_card
from nucleiseg.training.progress import PROGRESS_FILE, read_progress, summarize_progress

__all__ = ["BUILTIN_RECIPES", "SCRATCH", "TrainRequest", "list_recipes", "load_recipe", "train_runner"]

#: ``start_from`` value that trains the recipe from random weights instead of fine-tuning.
SCRATCH = "scratch"

REPO_CONFIGS = Path(__file__).resolve().parents[3] / "configs"
#: Recipes that need no repository checkout: a seconds-long rehearsal and a small CPU recipe.
BUILTIN_RECIPES: dict[str, dict[str, Any]] = {
    "tiny": {
        "model": {"arch": "unet", "params": {"depth": 3, "base_channels": 8}}, "targets": {"mode": "contour"},
        "crop_size": 64, "batch_size": 2, "steps_per_epoch": 3, "epochs": 3, "val_fraction": 0.2,
        "val_max_images": 1, "patience": 1000, "lr": 0.003, "amp": "off",
    },
    "small-cpu": {
        "model": {"arch": "unet", "params": {"depth": 4, "base_channels": 16}}, "targets": {"mode": "contour"},
        "crop_size": 128, "batch_size": 4, "epochs": 40, "val_fraction": 0.1, "val_max_images": 8,
        "patience": 8, "lr": 0.002,
    },
}
_VALIDATE_IMAGES = 20
NICENESS = 10
#: How often a running child is checked (a stat() of metrics.csv; read only when it changed).
POLL_S = 0.1
#: How often the progress of an epoch in flight (time left, the progress bar) is reported.
REPORT_S = 0.5


def list_recipes() -> dict[str, dict[str, Any]]:
    """Recipe name -> ``{"source", "arch", "epochs", ...}``: built-in ones and the repository's ``configs/*.yaml``."""
    names: dict[str, dict[str, Any]] = {}
    for name in BUILTIN_RECIPES:
        names[name] = {"source": "built-in"}
    if REPO_CONFIGS.is_dir():
        for path in sorted(REPO_CONFIGS.glob("*.yaml")):
            if not path.stem.startswith("fine_tune"):  # FineTuneConfig files: the fine-tune path, not a recipe
                names.setdefault(path.stem, {"source": f"configs/{path.name}"})
    out = {}
    for name, info in names.items():
        recipe = load_recipe(name)
        out[name] = {**info, "arch": recipe.get("model", {}).get("arch", "unet"), "epochs": recipe.get("epochs"),
                     "max_minutes": recipe.get("max_minutes"), "crop_size": recipe.get("crop_size")}
    return out


def load_recipe(name: str) -> dict[str, Any]:
    """The recipe ``name`` as a dict of TrainConfig fields, or 404."""
    if name in BUILTIN_RECIPES:
        return json.loads(json.dumps(BUILTIN_RECIPES[name]))
    path = REPO_CONFIGS / f"{name}.yaml"
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or not path.is_file() or name.startswith("fine_tune"):
        raise api_error(404, f"no recipe named '{name}'; GET /api/recipes lists them")
    with open(path, encoding="utf-8") as fh:
        return yaml.safe_load(fh) or {}


@dataclass(frozen=True)
class TrainRequest:
    """What the user picked on the Train screen."""

    name: str
    dataset: Dataset
    recipe: str
    arch: str
    minutes: float
    epochs: int | None = None
    start_from: str = "default"
    parent: str = "default"
    parent_label: str = "default"
    data_label: str = "<dataset>"

    @property
    def fine_tune(self) -> bool:
        """True unless the user asked to train from scratch."""
        return self.start_from != SCRATCH


def effective_recipe(req: TrainRequest, data: Path, run: Path, device: str) -> dict[str, Any]:
    """The recipe with the user's dataset, architecture, time budget and this machine's settings."""
    from nucleiseg.models.registry import model_params

    recipe = load_recipe(req.recipe)
    model = recipe.setdefault("model", {})
    if model.get("arch", "unet") != req.arch:  # keep only the parameters the new architecture has
        allowed = model_params(req.arch)
        model["params"] = {k: v for k, v in (model.get("params") or {}).items() if k in allowed}
    model["arch"] = req.arch
    recipe.update(data=str(data), out=str(run), max_minutes=req.minutes, extra_data=[], init_weights=None)
    if req.epochs is not None:
        recipe["epochs"] = req.epochs
    recipe["threads"] = _threads(device) or recipe.get("threads")
    return recipe


def train_command(run: Path, device: str) -> list[str]:
    """The ``nucleiseg train`` command of a prepared run folder."""
    return [sys.executable, "-m", "nucleiseg.cli.main", "train", "--config", str(run / "recipe.yaml"), "--out", str(run), "--device", device]


def _threads(device: str) -> int | None:
    """Torch threads of a CPU child: all cores but one, so the server stays responsive."""
    return max(1, (os.cpu_count() or 2) - 1) if device == "cpu" else None


def fine_tune_args(req: TrainRequest, parent: str, data: str, run: str, device: str) -> list[str]:
    """The arguments after ``nucleiseg`` of a fine-tune (the same for the child and the page)."""
    args = ["train", "--from", parent, "--data", data, "--max-minutes", f"{req.minutes:g}", "--out", run]
    threads = _threads(device)
    args += ["--threads", str(threads)] if threads else ["--device", device]
    return args


def shown_command(req: TrainRequest, runs_label: str, device: str = "cpu") -> str:
    """The command line that reproduces the job (shown on the page), with the server's folder names."""
    run = f"{runs_label}/{req.name}"
    if req.fine_tune:
        return shlex.join(["nucleiseg", *fine_tune_args(req, req.parent_label, req.data_label, run, device)])
    parts = ["nucleiseg", "train", "--config", f"{run}/recipe.yaml", "--out", run, "--device", device]
    validate = ["nucleiseg", "validate", run, "--tune", "--no-pipeline", "--max-images", str(_VALIDATE_IMAGES),
                "--data", f"{run}/data" if req.dataset.source == "upload" or not _is_dsb(req.dataset.path) else req.data_label]
    return f"{shlex.join(parts)} && {shlex.join(validate)}"


def _is_dsb(path: Path) -> bool:
    from nucleiseg.io.dsb import is_dsb_root

    return is_dsb_root(path)


def _tail(path: Path, size: int = 4096) -> str:
    if not path.is_file():
        return ""
    with open(path, "rb") as fh:
        fh.seek(max(0, path.stat().st_size - size))
        return fh.read().decode("utf-8", "replace")


def _failure(log: Path, run: Path, rc: int) -> str:
    """One line from the end of a failed child's log, without server paths."""
    lines = [ln.strip() for ln in re.split(r"[\r\n]+", _tail(log, 16384)) if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:") or re.match(r"^[\w.]*(Error|Exception)\b", ln)]
    line = (errors or lines or [f"exit status {rc}"])[-1]
    return scrub(scrub(line, run.parent, ""), Path.cwd(), "")[:300]


def _run_child(job: Job, cmd: list[str], log: Path, run: Path, phase: str, budget_s: float) -> int:
    """Run one child process to its end (or until stopped), reporting its ``progress.jsonl``."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    job.private["pid"] = proc.pid
    try:  # relative to the server's own priority, never above it
        os.setpriority(os.PRIO_PROCESS, proc.pid, min(19, os.getpriority(os.PRIO_PROCESS, 0) + NICENESS))
    except OSError:
        pass
    start, seen, interrupted, reported = time.monotonic(), -1.0, None, 0.0
    progress = run / PROGRESS_FILE
    while proc.poll() is None:
        if job.stop_requested and interrupted is None:
            interrupted = time.monotonic()
            os.killpg(proc.pid, signal.SIGINT)
        if interrupted is not None and time.monotonic() - interrupted > 10:
            os.killpg(proc.pid, signal.SIGKILL)
        if phase == "training":
            mtime = progress.stat().st_mtime if progress.is_file() else 0.0
            now = time.monotonic()
            if mtime != seen or now - reported >= REPORT_S:  # new events at once, the time left twice a second
                seen, reported = mtime, now
                _report_training(job, summarize_progress(read_progress(progress)), budget_s, now - start)
        job.wait_stop(POLL_S) if interrupted is None else time.sleep(0.2)
    return proc.returncode


def _report_training(job: Job, state: dict[str, Any], budget_s: float, elapsed: float) -> None:
    """Publish a run's progress (:func:`~nucleiseg.training.progress.summarize_progress`) on the job."""
    history = [{k: round(float(v), 5) for k, v in row.items() if k in _HISTORY_KEYS} for row in state["history"]]
    phase = state["phase"] if state["phase"] not in ("starting", "finished") else "training"
    fields: dict[str, Any] = {"phase": phase, "elapsed_s": round(elapsed, 1), "history": history,
                              "epoch": state["epoch"], "epoch_fraction": round(state["epoch_fraction"], 3)}
    if state.get("epochs"):
        fields["epochs"] = state["epochs"]
    trained = float(state.get("elapsed_s") or 0.0)
    if budget_s > 0:
        fields["eta_s"] = round(max(0.0, budget_s - trained), 1)
        fields["budget_fraction"] = round(min(1.0, trained / budget_s), 3)
    job.update(**fields)


#: The per-epoch fields the Train screen draws.
_HISTORY_KEYS = ("epoch", "train_loss", "val_score", "val_ap50", "val_f1", "seconds")


def _fine_tune_job(job: Job, req: TrainRequest, folder: Path, record: dict[str, Any], device: str) -> dict[str, Any] | None:
    """Run ``nucleiseg train --from`` on the dataset itself; the run reports, tunes and writes its card."""
    args = fine_tune_args(req, req.parent, str(req.dataset.path), str(folder), device)
    job.update(phase="training", start_from=req.start_from, epoch=0, history=[])
    rc = _run_child(job, [sys.executable, "-m", "nucleiseg.cli.main", *args], folder / "train.log", folder, "training",
                    req.minutes * 60)
    if rc != 0 and not job.stop_requested:
        write_app_record(folder, {**record, "state": "failed"})
        raise JobFailed(f"fine-tuning failed: {_failure(folder / 'train.log', folder, rc)}")
    if not (folder / "evaluation.json").is_file():
        write_app_record(folder, {**record, "state": "stopped"})
        for name in ("weights.safetensors", "config.json"):  # not a finished model: not listed
            (folder / name).unlink(missing_ok=True)
        return {"run": None, "message": "stopped before the fine-tune ended: no model was kept"}
    write_app_record(folder, {**record, "state": "finished", "ended": time.time()})
    evaluation = json.loads((folder / "evaluation.json").read_text())
    keys = ("n_images", "val_on_train", "parent", "native_default", "native_tuned")
    return {"run": req.name, "evaluation": {k: evaluation.get(k) for k in keys}}


def train_runner(req: TrainRequest, runs_root: Path, device: str):
    """The job runner training ``req`` into ``runs_root/req.name`` (see the module docstring)."""

    def run(job: Job) -> dict[str, Any] | None:
        folder = runs_root / req.name
        folder.mkdir(parents=True, exist_ok=False)
        record = {"name": req.name, "dataset": req.dataset.name, "recipe": req.recipe, "arch": req.arch,
                  "minutes": req.minutes, "command": job.command, "job": job.id, "created": time.time(),
                  "start_from": req.start_from}
        write_app_record(folder, {**record, "state": "preparing"})
        job.update(phase="preparing", run=req.name)
        if req.fine_tune:
            return _fine_tune_job(job, req, folder, record, device)
        try:
            data, n_images = stage_for_training(req.dataset.path, folder / "data")
        except (ValueError, OSError) as exc:
            write_app_record(folder, {**record, "state": "failed"})
            raise JobFailed(f"dataset '{req.dataset.name}': {scrub(str(exc), req.dataset.path, '')}") from None
        recipe = effective_recipe(req, data, folder, device)
        (folder / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
        epochs = int(recipe.get("epochs", 50))
        job.update(phase="training", images=n_images, epochs=epochs, epoch=0, history=[])
        rc = _run_child(job, train_command(folder, device), folder / "train.log", folder, "training", req.minutes * 60)
        stopped = job.stop_requested
        if rc != 0 and not stopped:
            write_app_record(folder, {**record, "state": "failed"})
            raise JobFailed(f"training failed: {_failure(folder / 'train.log', folder, rc)}")
        job.update(history=read_history(folder / "metrics.csv"))
        if not (folder / "weights.safetensors").is_file():
            write_app_record(folder, {**record, "state": "stopped"})
            return {"run": None, "message": "stopped before the first epoch ended: no model was kept"}
        job.update(phase="validating")
        validate = [sys.executable, "-m", "nucleiseg.cli.main", "validate", str(folder), "--data", str(data),
                    "--tune", "--no-pipeline", "--max-images", str(_VALIDATE_IMAGES)]
        job.clear_stop()  # a stop during training still validates what was learnt; a second stop ends it
        rc = _run_child(job, validate, folder / "validate.log", folder, "validating", 0.0)
        state = "stopped" if stopped or job.stop_requested else "finished"
        if rc != 0 and not job.stop_requested:
            write_app_record(folder, {**record, "state": "failed"})
            raise JobFailed(f"validation failed: {_failure(folder / 'validate.log', folder, rc)}")
        if stopped:
            job.request_stop()
        write_model_card(folder)
        write_app_record(folder, {**record, "state": state, "ended": time.time()})
        evaluation = json.loads((folder / "evaluation.json").read_text()) if (folder / "evaluation.json").is_file() else {}
        return {"run": req.name, "evaluation": {k: evaluation.get(k) for k in ("n_images", "native_default", "native_tuned")}}

    return run
