"""The worker side of every Dask task: one model per worker process, loaded on first use."""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

from nucleiseg.bundle import CLASSICAL, ModelBundle, ModelSpec
from nucleiseg.inference.item import load_segmenter
from nucleiseg.inference.predictors import AUTO
from nucleiseg.inference.segmenter import Segmenter

__all__ = ["as_spec", "cached_segmenter", "model_reference", "worker_spec"]

_CACHE: dict[tuple[ModelSpec, float], Segmenter] = {}
_CACHE_LOCK = threading.Lock()
#: How many models this process has loaded (tests check that workers load each model once).
LOADS = {"count": 0}


def model_reference(model: str | Path) -> str:
    """``"classical"``, a bundled name or an absolute folder / ``.onnx`` file (see :meth:`ModelSpec.of`)."""
    return ModelSpec.of(model).model


def as_spec(model: ModelSpec | str | Path, device: str = "cpu", backend: str = AUTO) -> ModelSpec:
    """``model`` as a :class:`ModelSpec` (a name or folder gets ``backend``, by default ``"auto"``
    as in ``nucleiseg segment`` and :meth:`Segmenter.from_pretrained`, and ``device``)."""
    return model if isinstance(model, ModelSpec) else ModelSpec.of(model, backend, device)


def worker_spec(spec: ModelSpec) -> ModelSpec:
    """On a Dask worker, a spec without ``threads`` gets the worker's thread count.

    Otherwise every worker process would start a runtime with one thread per core of the
    machine, and the workers of one machine would fight over the cores.
    """
    if spec.threads is not None:
        return spec
    try:
        from distributed import get_worker

        threads = int(getattr(get_worker(), "nthreads", 0) or 0)
    except (ImportError, ValueError):  # not on a worker
        return spec
    return replace(spec, threads=threads) if threads > 0 else spec


def _stamp(spec: ModelSpec) -> float:
    """Latest modification time of the model's weights and ONNX files (0 for the classical model)."""
    if spec.model == CLASSICAL:
        return 0.0
    path = Path(spec.model)
    if path.suffix.lower() == ".onnx":
        return path.stat().st_mtime if path.is_file() else 0.0
    bundle = ModelBundle.open(spec.model)
    files = [f for f in (bundle.weights, *bundle.onnx.values()) if f is not None]
    return max((f.stat().st_mtime for f in files if f.is_file()), default=0.0)


def cached_segmenter(model: ModelSpec | str | Path, device: str = "cpu") -> Segmenter:
    """The :class:`Segmenter` of ``model``, loaded once per process and reused by later tasks.

    The cache key is the whole spec (model, backend, device, threads) and the modification time
    of the model's weights and ONNX files, so a long-lived worker picks up a model folder that
    was retrained or re-exported in place. A name or folder is loaded with the ``"auto"`` backend;
    on a Dask worker a spec without threads gets the worker's (:func:`worker_spec`).
    """
    spec = worker_spec(as_spec(model, device))
    key = (spec, _stamp(spec))
    with _CACHE_LOCK:
        if key not in _CACHE:
            for old in [k for k in _CACHE if k[0] == spec]:
                del _CACHE[old]
            _CACHE[key] = load_segmenter(spec)
            LOADS["count"] += 1
        return _CACHE[key]
