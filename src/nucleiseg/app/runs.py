"""Run folders trained from the web app, their model cards, and the models a request may pick.

A run folder under ``--runs DIR`` is a model once it holds ``weights.safetensors`` and
``config.json`` (``nucleiseg train``); ``app.json`` records what the web app started it with and
``MODEL_CARD.md`` is written after validation. Every finished run is listed after a restart.
"""

from __future__ import annotations

import collections
import csv
import json
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nucleiseg.app.limits import api_error
from nucleiseg.bundle import RUN_PREFIX, reserved_names
from nucleiseg.io.atomic import atomic_write_text

__all__ = [
    "ModelRegistry", "list_runs", "read_history", "run_details", "run_model_name", "write_app_record", "write_model_card",
]

RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def write_app_record(run: Path, record: dict[str, Any]) -> None:
    """Write ``RUN/app.json`` (what the app started and how it ended), atomically."""
    atomic_write_text(run / "app.json", json.dumps(record, indent=2))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError):
        return {}


def read_history(path: Path) -> list[dict[str, float]]:
    """The per-epoch rows of a run's ``metrics.csv`` (loss, validation scores, seconds)."""
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    keep = ("epoch", "train_loss", "val_score", "val_ap50", "val_f1", "seconds")
    return [{k: round(float(r[k]), 5) for k in keep if r.get(k) not in (None, "")} for r in rows]


def _is_model(run: Path) -> bool:
    return (run / "weights.safetensors").is_file() and (run / "config.json").is_file()


def run_model_name(name: str) -> str:
    """The model name a request uses for run ``name``: the name itself, or ``run:NAME`` when a bundled model has it."""
    reserved = {n.lower() for n in reserved_names()}
    return f"{RUN_PREFIX}{name}" if name.lower() in reserved else name


def list_runs(root: Path | None) -> list[dict[str, Any]]:
    """Finished runs (folders holding a model) under ``root``, newest first.

    Runs the app is still training, or whose training failed, are left out; run folders copied in
    from ``nucleiseg train`` (no ``app.json``) are listed.
    """
    if root is None or not root.is_dir():
        return []
    out = []
    for run in root.iterdir():
        if not run.is_dir() or not RUN_NAME.match(run.name) or not _is_model(run):
            continue
        app, report, evaluation = _read_json(run / "app.json"), _read_json(run / "report.json"), _read_json(run / "evaluation.json")
        if app.get("state", "finished") not in ("finished", "stopped"):  # still training, or failed
            continue
        arch = _read_json(run / "config.json").get("model", {}).get("arch")
        tuned = evaluation.get("native_tuned") or {}
        out.append({
            "name": run.name, "model": run_model_name(run.name), "arch": arch, "dataset": app.get("dataset"), "recipe": app.get("recipe"),
            "state": app.get("state", "finished"), "created": app.get("created", run.stat().st_mtime),
            "epochs_run": report.get("epochs_run"), "best_val_score": report.get("best_val_score"),
            "val_score": tuned.get("val_score"), "val_images": evaluation.get("n_images"),
        })
    return sorted(out, key=lambda r: -float(r["created"] or 0))


def run_details(root: Path | None, name: str) -> dict[str, Any]:
    """One run's listing entry plus its model card and per-epoch history, or 404."""
    entry = next((r for r in list_runs(root) if r["name"] == name), None)
    if entry is None or root is None:
        raise api_error(404, f"no finished run named '{name}'")
    run = root / name
    card = (run / "MODEL_CARD.md").read_text(encoding="utf-8") if (run / "MODEL_CARD.md").is_file() else ""
    return {**entry, "model_card": card, "history": read_history(run / "metrics.csv"),
            "evaluation": _read_json(run / "evaluation.json")}


def write_model_card(run: Path) -> str:
    """Write ``RUN/MODEL_CARD.md`` (:func:`nucleiseg.training.bundle.model_card`) from the run's recipe, report and validation."""
    from nucleiseg.bundle import file_hash
    from nucleiseg.training.bundle import model_card

    app, train = _read_json(run / "app.json"), _read_json(run / "train.json")
    report, evaluation = _read_json(run / "report.json"), _read_json(run / "evaluation.json")
    weights = run / "weights.safetensors"
    trained_on = (
        f"Trained by the nucleiseg web app on dataset `{app.get('dataset')}` with recipe `{app.get('recipe')}` "
        f"(`recipe.yaml`, `train.json` here); {report.get('n_train', '?')} training images, validation split fixed "
        f"by `split.json` (fraction {train.get('val_fraction')}, seed {train.get('split_seed')})."
    )
    limits = ("Scores on a few validation images of one dataset; check other image kinds with the "
              "Performance screen or `nucleiseg evaluate`.")
    text = model_card(run.name, train, report, evaluation, file_hash(weights) if weights.is_file() else "unknown",
                      trained_on=trained_on, limits=limits)
    atomic_write_text(run / "MODEL_CARD.md", text)
    return text


class ModelRegistry:
    """Models a request may name: the bundled ones, ``classical`` and finished runs; a few kept loaded.

    Parameters
    ----------
    default : callable
        Returns the server's own model (the :class:`~nucleiseg.app.server.ModelHolder`'s).
    default_name : str
        The name it was requested under.
    available : callable
        Names of the bundled models (and ``classical``).
    loader : callable
        ``loader(name_or_folder, device) -> Segmenter``.
    runs_root : Path, optional
    device : str
    cache_size : int
        Other models kept in memory at once (least recently used dropped first).
    """

    def __init__(self, default: Callable[[], Any], default_name: str, available: Callable[[], list[str]],
                 loader: Callable[[str | Path, str], Any], runs_root: Path | None, device: str, cache_size: int = 2) -> None:
        self._default = default
        self.default_name = default_name
        self._available = available
        self._loader = loader
        self.runs_root = runs_root
        self.device = device
        self.cache_size = cache_size
        self._cache: collections.OrderedDict[str, Any] = collections.OrderedDict()
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        """Every name :meth:`get` accepts, each model once: bundled names, then runs (``run:NAME`` where a bundled model has NAME)."""
        return list(dict.fromkeys([*self._available(), *(r["model"] for r in list_runs(self.runs_root))]))

    def resolve(self, name: str) -> str | Path:
        """What ``name`` loads: a bundled model's name, or a run folder (``run:NAME``, or a run's own name); else 404.

        A bundled name always means the bundled model, even when a run folder has that name.
        """
        if name in self._available():
            return name
        run = name.removeprefix(RUN_PREFIX)
        listed = {r["name"]: r["model"] for r in list_runs(self.runs_root)}
        if self.runs_root is not None and run in listed and name in (listed[run], f"{RUN_PREFIX}{run}"):
            return self.runs_root / run
        raise api_error(404, f"no model named '{name}'; GET /api/models lists them")

    def get(self, name: str | None):  # noqa: ANN201 - a Segmenter
        """The model called ``name`` (None: the server's model), loading it once; 404 if unknown."""
        if name in (None, "", self.default_name):
            return self._default()
        target = self.resolve(name)
        key = str(target)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
            segmenter = self._loader(target, self.device)
            self._cache[key] = segmenter
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
            return segmenter
