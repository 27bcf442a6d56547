"""The worker side of every Dask task: one model per worker process, loaded on first use."""

from __future__ import annotations

import threading
from pathlib import Path

from nucleiseg.inference.segmenter import CLASSICAL, Segmenter, resolve_model_dir

__all__ = ["cached_segmenter", "model_reference"]

_CACHE: dict[tuple[str, str, float], Segmenter] = {}
_CACHE_LOCK = threading.Lock()
#: How many models this process has loaded (tests check that workers load each model once).
LOADS = {"count": 0}


def model_reference(model: str | Path) -> str:
    """What tasks carry instead of the model: ``"classical"``, a bundled name or an absolute folder.

    A relative run folder is made absolute so workers started elsewhere still find it.
    """
    text = str(model)
    if text == CLASSICAL:
        return text
    path = Path(text)
    if (path / "config.json").is_file():
        return str(path.resolve())
    return text


def cached_segmenter(model: str, device: str = "cpu") -> Segmenter:
    """The :class:`Segmenter` for ``model``, loaded once per process and reused by later tasks.

    The cache key includes the weights file's modification time, so a long-lived worker picks
    up a model folder that was retrained in place.
    """
    stamp = 0.0
    if model != CLASSICAL:
        weights = resolve_model_dir(model) / "weights.safetensors"
        stamp = weights.stat().st_mtime if weights.is_file() else 0.0
    key = (model, device, stamp)
    with _CACHE_LOCK:
        if key not in _CACHE:
            for old in [k for k in _CACHE if k[:2] == key[:2]]:
                del _CACHE[old]
            _CACHE[key] = Segmenter.from_pretrained(model, device=device)
            LOADS["count"] += 1
        return _CACHE[key]
