"""Structured training progress: one JSON object per line in ``RUN/progress.jsonl``.

The trainer (and the fine-tuning steps after it) append events here; the web app and the napari
widget read them instead of parsing a progress bar's text. Every line is a complete JSON object
with ``event`` and ``time`` (seconds since the epoch); a reader that meets a half-written last
line (the writer is mid-line) skips it and reads it whole the next time.

Events: ``start`` (``epochs``, ``max_minutes``, ``steps``, ``n_train``, ``n_val``,
``val_on_train``), ``step`` (``epoch``, ``step``, ``steps``, ``loss``, ``elapsed_s``; at most
every ``interval_s``), ``epoch`` (the row of ``metrics.csv`` plus ``best_score``), ``phase``
(``phase``: ``averaging``, ``tuning``, ``comparing``, ``exporting``, ...), ``end`` (``report``)
and ``error`` (``message``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

__all__ = ["PROGRESS_FILE", "ProgressLog", "read_progress", "summarize_progress"]

#: The progress file's name inside a run folder.
PROGRESS_FILE = "progress.jsonl"


class ProgressLog:
    """Append-only writer of ``progress.jsonl``.

    Parameters
    ----------
    path : path
        The file (its folder must exist); ``None`` writes nothing.
    interval_s : float
        Least time between two ``step`` events (other events are always written).
    """

    def __init__(self, path: str | Path | None, interval_s: float = 1.0) -> None:
        self.path = None if path is None else Path(path)
        self.interval_s = interval_s
        self._last_step = float("-inf")

    def write(self, event: str, **fields: Any) -> None:
        """Append one event (``event``, ``time`` and ``fields``) as a line, flushed at once."""
        if self.path is None:
            return
        line = json.dumps({"event": event, "time": round(time.time(), 3), **fields}, default=float)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
            fh.flush()

    def step(self, **fields: Any) -> None:
        """A ``step`` event, unless one was written less than ``interval_s`` ago."""
        now = time.monotonic()
        if now - self._last_step >= self.interval_s:
            self._last_step = now
            self.write("step", **fields)


def read_progress(path: str | Path) -> list[dict[str, Any]]:
    """Every complete event of a ``progress.jsonl`` file, in order ([] when it does not exist)."""
    path = Path(path)
    if not path.is_file():
        return []
    events = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:  # the line being written
            continue
        if isinstance(event, dict) and "event" in event:
            events.append(event)
    return events


def summarize_progress(events: list[dict[str, Any]]) -> dict[str, Any]:
    """Where a run stands: ``phase``, ``epoch``, ``epochs``, ``epoch_fraction``, ``elapsed_s``,
    ``max_minutes``, ``history`` (the ``epoch`` events) and ``loss`` (the latest step's)."""
    out: dict[str, Any] = {"phase": "starting", "epoch": 0, "epoch_fraction": 0.0, "history": []}
    for ev in events:
        kind = ev["event"]
        if kind == "start":
            out.update(phase="training", epochs=ev.get("epochs"), max_minutes=ev.get("max_minutes"),
                       n_train=ev.get("n_train"), n_val=ev.get("n_val"), val_on_train=ev.get("val_on_train"))
        elif kind == "step":
            out.update(epoch=ev["epoch"], epoch_fraction=ev["step"] / max(ev["steps"], 1),
                       elapsed_s=ev["elapsed_s"], loss=ev.get("loss"))
        elif kind == "epoch":
            row = {k: v for k, v in ev.items() if k not in ("event", "time")}
            out["history"].append(row)
            out.update(epoch=ev["epoch"], epoch_fraction=1.0, elapsed_s=ev["seconds"])
        elif kind == "phase":
            out["phase"] = ev["phase"]
        elif kind == "end":
            out["phase"] = "finished"
        elif kind == "error":
            out.update(phase="failed", message=ev.get("message"))
    return out
