"""Segment many images with a pool of worker processes, each with its own model and threads.

On a CPU, one process per core segments a folder faster than one process with many threads:
the network scales imperfectly with threads, and the post-processing (watershed,
measurements, writing files) runs on one core. Each worker loads the model once (by the
``source`` recorded by :meth:`Segmenter.from_pretrained`) and runs
:func:`~nucleiseg.inference.batch.segment_one`, so its records and files are the serial ones.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from nucleiseg.config import InferConfig, PostprocessConfig
from nucleiseg.inference.segmenter import Segmenter
from nucleiseg.io.labels import InputItem

__all__ = ["available_cpus", "iter_outcomes"]

_STATE: dict[str, Any] = {}


def available_cpus() -> int:
    """CPU cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _init(source: tuple[str, str, str], threads: int, args: tuple[Any, ...]) -> None:
    import torch

    torch.set_num_threads(threads)
    name, device, backend = source
    _STATE["segmenter"] = Segmenter.from_pretrained(name, device=device, backend=backend, threads=threads)
    _STATE["args"] = args


def _work(item: InputItem) -> dict[str, Any]:
    from nucleiseg.inference.batch import segment_one

    out_dir, options, infer, post, want_labels = _STATE["args"]
    return segment_one(item, _STATE["segmenter"], out_dir, options, infer, post, want_labels=want_labels)


def iter_outcomes(
    items: list[InputItem],
    segmenter: Segmenter,
    out_dir: Path,
    options: Any,
    infer: InferConfig,
    post: PostprocessConfig,
    workers: int,
    want_labels: bool = False,
    threads: int | None = None,
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(index into items, segment_one outcome)`` as the workers finish images.

    Parameters
    ----------
    items, out_dir, options, infer, post, want_labels
        As for :func:`~nucleiseg.inference.batch.segment_one`.
    segmenter : Segmenter
        Loaded with :meth:`Segmenter.from_pretrained`; the workers load the same model.
    workers : int
        Worker processes (>= 2).
    threads : int, optional
        Threads per worker (default: the available cores divided by ``workers``, at least 1).

    Raises
    ------
    ValueError
        When ``segmenter`` was not loaded by :meth:`Segmenter.from_pretrained`.
    """
    from nucleiseg.inference.batch import failure_record

    if segmenter.source is None:
        raise ValueError("workers > 1 needs a model loaded with Segmenter.from_pretrained (workers reload it by name)")
    threads = threads or max(1, available_cpus() // workers)
    args = (Path(out_dir), options, infer, post, want_labels)
    context = multiprocessing.get_context("spawn")  # fork is unsafe once OpenMP threads exist
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init, initargs=(segmenter.source, threads, args)) as pool:
        futures = {pool.submit(_work, item): i for i, item in enumerate(items)}
        for future in as_completed(futures):
            index = futures[future]
            try:
                yield index, future.result()
            except Exception as exc:  # noqa: BLE001 - a worker died (out of memory, killed): record it, go on
                yield index, {"failure": failure_record(items[index], exc)}
