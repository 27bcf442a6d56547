"""``run.json``: what a batch did, built and written the same way by every executor.

:class:`RunRecord` is what :func:`nucleiseg.inference.batch.segment_items` returns and writes:
the model and settings (:meth:`Segmenter.describe`), library versions, how the images were
scheduled (serial, worker processes, a Dask cluster, block-wise), one record per image (in input
order, resumed images included), one failure record per file that could not be segmented, the
ids taken over from an earlier run (``--resume``) and a summary.
"""

from __future__ import annotations

import json
import platform
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from nucleiseg import __version__
from nucleiseg.io.atomic import atomic_write_text

__all__ = ["RunRecord", "failure_record", "read_records", "versions"]

#: Distributions whose versions go into every record (those not installed are left out).
PACKAGES = ("numpy", "torch", "onnxruntime", "scikit-image", "scipy", "dask", "distributed")


def versions() -> dict[str, str]:
    """Versions of Python, nucleiseg and the main libraries, read without importing them.

    The package metadata is read (:mod:`importlib.metadata`), so a command that never runs
    PyTorch does not import it just to record its version.
    """
    found = {"nucleiseg": __version__, "python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    found["platform"] = platform.platform()
    return found


def failure_record(item: Any, exc: BaseException) -> dict[str, str]:
    """The one-line failure record of an item: id, file and a message naming the file."""
    text = str(exc).strip()
    message = text.splitlines()[0] if text else type(exc).__name__
    if str(item.image_path) not in message:
        message = f"{item.image_path}: {message}"
    return {"id": item.id, "file": str(item.image_path), "error": message}


def _usable(entry: Any) -> bool:
    """A per-image record this version can take over as it is (else it is rebuilt from the files)."""
    if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
        return False
    count, outputs = entry.get("count"), entry.get("outputs", [])
    count_ok = count is None or (isinstance(count, int) and not isinstance(count, bool) and count >= 0)
    return count_ok and isinstance(outputs, list) and all(isinstance(o, str) for o in outputs)


def read_records(path: str | Path) -> dict[str, dict[str, Any]]:
    """Per-image records of an earlier ``run.json`` by id.

    Empty when the file is missing or unreadable (truncated, not JSON, not an object); records
    that are damaged are left out, so the caller rebuilds them from the files.
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list):
        return {}
    return {r["id"]: r for r in images if _usable(r)}


@dataclass
class RunRecord:
    """What a batch did: model, schedule, per-image records, failures and resumed ids.

    Attributes
    ----------
    model : dict
        :meth:`Segmenter.describe` of the model and the settings in force.
    executor : dict
        ``{"kind": "serial" | "processes" | "dask" | "blocks", ...}``: worker counts, threads,
        the Dask scheduler.
    images : list of dict
        One record per segmented image, input order; resumed images keep their earlier record.
    failures : list of dict
        One ``{"id", "file", "error"}`` per file that could not be segmented, input order.
    skipped : list of str
        Ids whose outputs existed already (``--resume``); their records are in ``images``.
    seconds : float
        Wall time of this run.
    stopped : str or None
        Why the batch stopped early (an output-folder error), else None.
    """

    model: dict[str, Any] = field(default_factory=dict)
    executor: dict[str, Any] = field(default_factory=lambda: {"kind": "serial", "workers": 1})
    images: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, str]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0
    stopped: str | None = None

    @property
    def nuclei(self) -> int:
        """Total nuclei over the images (resumed ones included)."""
        return sum(int(r.get("count") or 0) for r in self.images)

    def summary(self) -> dict[str, Any]:
        """Counts for ``run.json``."""
        return {
            "images": len(self.images), "resumed": len(self.skipped), "nuclei": self.nuclei,
            "failed": len(self.failures), "seconds": round(self.seconds, 3),
        }

    def line(self) -> str:
        """The one-line summary printed at the end of a command."""
        resumed = f" ({len(self.skipped)} resumed)" if self.skipped else ""
        stopped = ", stopped early" if self.stopped else ""
        return (
            f"{len(self.images)} images segmented{resumed}, {self.nuclei} nuclei, "
            f"{len(self.failures)} failed{stopped}, {self.seconds:.1f} s"
        )

    def to_dict(self) -> dict[str, Any]:
        """The content of ``run.json``."""
        return {
            **self.model,
            "versions": versions(),
            "executor": self.executor,
            "images": self.images,
            "failures": self.failures,
            "skipped": self.skipped,
            "summary": self.summary(),
            **({"stopped": self.stopped} if self.stopped else {}),
        }

    def write(self, path: str | Path) -> Path:
        """Write :meth:`to_dict` as JSON to ``path`` atomically; returns the path."""
        target = Path(path)
        atomic_write_text(target, json.dumps(self.to_dict(), indent=2))
        return target
