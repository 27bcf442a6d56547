"""The *Train on these corrections* dock widget: fine-tune a model on the viewer's images and their
(corrected) Labels layers, in the background, and make the result a model.

Every chosen image/labels pair is written as ``x.tif`` + ``x_masks.tif`` under
``runs_dir()/.data/<run>/``; ``nucleiseg train --from MODEL --data THAT --max-minutes M --out
runs_dir()/<run>`` then runs in a child process (the viewer stays usable; stopping it is
possible) and its ``progress.jsonl`` drives the widget's progress bar. The finished run folder is
an ordinary model: the widget offers it as a starting point, and ``Segmenter.from_pretrained``,
the CLI and the Segment widget's model list (runs under :func:`runs_dir`) accept it.

No ``from __future__ import annotations`` here: magicgui reads the real annotation objects.
"""

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import numpy as np

from nucleiseg.bundle import CLASSICAL, list_bundled
from nucleiseg.napari._core import runs_dir
from nucleiseg.training.progress import PROGRESS_FILE, read_progress, summarize_progress

__all__ = ["TrainWidget", "image_label_pairs", "runs_dir", "stage_pairs", "trained_runs"]


def trained_runs(root: "Path | None" = None) -> List[str]:
    """Names of the finished runs (folders with a model and its evaluation) under ``root``, sorted."""
    root = runs_dir() if root is None else root
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if not p.name.startswith(".")
                  and (p / "weights.safetensors").is_file() and (p / "evaluation.json").is_file())


def image_label_pairs(layers: Any) -> List[Tuple[str, str]]:
    """``(image layer, labels layer)`` names of the same height and width; a Labels layer named
    ``"<image> nuclei"`` (the Segment widget's output) goes with that image, others with the
    first image of their size."""
    import napari.layers

    images = [ly for ly in layers if isinstance(ly, napari.layers.Image)]
    pairs = []
    for labels in (ly for ly in layers if isinstance(ly, napari.layers.Labels)):
        same = [im for im in images if _yx(im) == tuple(labels.data.shape[-2:])]
        named = [im for im in same if labels.name == f"{im.name} nuclei"]
        if named or same:
            pairs.append(((named or same)[0].name, labels.name))
    return pairs


def _yx(image: Any) -> Tuple[int, ...]:
    shape = tuple(np.shape(image.data))
    return shape[-3:-1] if image.rgb else shape[-2:]


def stage_pairs(pairs: List[Tuple[np.ndarray, np.ndarray, str]], folder: Path) -> int:
    """Write ``(image, labels, name)`` pairs as ``name.tif`` + ``name_masks.tif``; returns the number
    of nuclei. Only 2-D images (gray or RGB) with at least one labelled nucleus are accepted."""
    import tifffile

    from nucleiseg.io.atomic import atomic_path

    folder.mkdir(parents=True, exist_ok=True)
    nuclei = 0
    for image, labels, name in pairs:
        if labels.ndim != 2 or image.shape[:2] != labels.shape:
            raise ValueError(f"{name}: only 2-D images with a labels layer of the same size can be trained on "
                             f"(image {image.shape}, labels {labels.shape})")
        count = len(np.unique(labels[labels > 0]))
        if not count:
            raise ValueError(f"{name}: the labels layer is empty; annotate or correct some nuclei first")
        nuclei += count
        stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
        for path, array in ((folder / f"{stem}.tif", image), (folder / f"{stem}_masks.tif", labels.astype(np.int32))):
            with atomic_path(path) as tmp:
                tifffile.imwrite(tmp, np.asarray(array))
    return nuclei


def fine_tune_process(parent: str, data: Path, out: Path, minutes: float, extra: List[str]) -> "subprocess.Popen[bytes]":
    """Start ``nucleiseg train --from`` in a child process at a lower priority; its output goes to ``out/train.log``."""
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "nucleiseg.cli.main", "train", "--from", parent, "--data", str(data),
           "--max-minutes", f"{minutes:g}", "--out", str(out), *extra]
    with open(out / "train.log", "ab") as log:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                preexec_fn=lambda: os.nice(10) if hasattr(os, "nice") else None)


def follow(proc: "subprocess.Popen[bytes]", out: Path, poll_s: float = 0.5) -> Iterator[Dict[str, Any]]:
    """Yield the run's progress (:func:`summarize_progress`) until the child ends; raise its last error line."""
    while proc.poll() is None:
        yield summarize_progress(read_progress(out / PROGRESS_FILE))
        time.sleep(poll_s)
    if proc.returncode != 0:
        lines = [ln for ln in (out / "train.log").read_text(errors="replace").splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("error:") or "Error" in ln.split(":")[0]]
        raise RuntimeError((errors or lines or [f"exit status {proc.returncode}"])[-1])
    yield summarize_progress(read_progress(out / PROGRESS_FILE))


def _status(state: Dict[str, Any], minutes: float) -> Tuple[str, int]:
    """A one-line status and a 0-100 progress value for a run's progress summary."""
    elapsed = float(state.get("elapsed_s") or 0.0)
    value = int(min(100, 100 * elapsed / max(minutes * 60, 1e-6)))
    phase = state["phase"]
    if phase == "training":
        last = state["history"][-1] if state["history"] else None
        score = f", score {last['val_score']:.3f}" if last else ""
        return f"training: epoch {max(1, state['epoch'])}, {elapsed:.0f} of {minutes * 60:.0f} s{score}", value
    return f"{phase}...", 100 if phase == "done" else value


from magicgui.widgets import ComboBox, Container, FloatSpinBox, Label, LineEdit, ProgressBar, PushButton, Select  # noqa: E402


class TrainWidget(Container):
    """Dock widget: pick image/labels pairs, a model to start from and a time budget; train in the background.

    Attributes
    ----------
    extra_args : list of str
        More ``nucleiseg train`` options for the child (e.g. ``["--crop-size", "64"]``).
    last_run : Path or None
        The folder of the last finished run.
    """

    def __init__(self, napari_viewer: Any) -> None:
        self.viewer = napari_viewer
        self.extra_args: List[str] = []
        self.last_run: "Path | None" = None
        self.worker: Any = None
        self._pairs = Select(label="image ← labels", choices=self._pair_choices)
        self._from = ComboBox(label="start from", choices=self._model_choices, tooltip="bundled model or a run trained here")
        self._minutes = FloatSpinBox(label="minutes", value=2.0, min=0.01, max=600.0, step=0.5)
        self._name = LineEdit(label="run name", value="")
        self._button = PushButton(text="Train on these corrections")
        self._bar = ProgressBar(value=0, min=0, max=100, visible=False)
        self._status = Label(value="")
        super().__init__(widgets=[self._pairs, self._from, self._minutes, self._name, self._button, self._bar, self._status])
        self._button.changed.connect(self.start)
        for event in (napari_viewer.layers.events.inserted, napari_viewer.layers.events.removed):
            event.connect(lambda _e: self._refresh())
        self._refresh()

    def _pair_choices(self, _widget: Any = None) -> List[str]:
        return [f"{image} ← {labels}" for image, labels in image_label_pairs(self.viewer.layers)]

    def _model_choices(self, _widget: Any = None) -> List[str]:
        bundled = sorted((m for m in list_bundled() if m != CLASSICAL), key=lambda m: (m != "default", m))
        return bundled + [str(runs_dir() / r) for r in trained_runs()]

    def _refresh(self) -> None:
        self._pairs.reset_choices()
        self._pairs.value = list(self._pairs.choices)
        chosen = self._from.value
        self._from.reset_choices()
        self._from.value = chosen if chosen in self._from.choices else self._from.choices[0]

    def start(self) -> Any:
        """Stage the chosen pairs and start the fine-tune; returns the napari worker."""
        from napari.qt.threading import thread_worker

        chosen = [tuple(v.split(" ← ")) for v in self._pairs.value]
        if not chosen:
            self._status.value = "no image with a labels layer of its size: add or correct a Labels layer first"
            return None
        name = self._name.value.strip() or f"napari-{time.strftime('%Y%m%d-%H%M%S')}"
        out, data = runs_dir() / name, runs_dir() / ".data" / name
        if out.exists():
            self._status.value = f"a run named {name} exists already in {runs_dir()}"
            return None
        layers = self.viewer.layers
        try:
            nuclei = stage_pairs([(np.asarray(layers[i].data), np.asarray(layers[lb].data), i) for i, lb in chosen], data)
        except ValueError as exc:
            self._status.value = str(exc)
            return None
        minutes, parent = float(self._minutes.value), str(self._from.value)
        proc = fine_tune_process(parent, data, out, minutes, self.extra_args)
        self._status.value = f"fine-tuning {parent} on {len(chosen)} image(s), {nuclei} nuclei..."
        self._bar.visible, self._button.enabled = True, False
        worker = thread_worker(follow, start_thread=False)(proc, out)
        worker.yielded.connect(lambda state: self._show(state, minutes))
        worker.returned.connect(lambda _r: self._finished(out))
        worker.errored.connect(self._failed)
        self.worker = worker
        worker.start()
        return worker

    def _show(self, state: Dict[str, Any], minutes: float) -> None:
        self._status.value, self._bar.value = _status(state, minutes)

    def _finished(self, out: Path) -> None:
        import json

        self.last_run, self._button.enabled, self._bar.value = out, True, 100
        ev = json.loads((out / "evaluation.json").read_text())
        self._status.value = (f"done: {out.name} is a model now (parent {ev['parent']['val_score']:.3f}, "
                              f"fine-tuned {ev['native_tuned']['val_score']:.3f})")
        self._refresh()

    def _failed(self, exc: BaseException) -> None:
        self._button.enabled = True
        self._status.value = f"fine-tuning failed: {exc}"
