"""Where the per-image step runs: in this process (one image at a time, or one per core on threads), or in worker processes.

An executor maps an :class:`~nucleiseg.inference.item.ItemStep` over the items and yields
``(index into items, outcome)`` as images finish, in any order; it writes nothing itself and
knows nothing of resume, the run-length CSV or ``run.json`` (the batch driver,
:func:`nucleiseg.inference.batch.segment_items`, owns those). Every executor has ``map`` and
``describe`` (for ``run.json``); the Dask one lives in :mod:`nucleiseg.distributed.executor`.

On a CPU, one process per core segments a folder faster than one process with many threads: the
network scales imperfectly with threads, and the post-processing (watershed, measurements,
writing files) runs on one core. Each worker process loads the model once from the picklable
:class:`~nucleiseg.bundle.ModelSpec`, with its backend and its share of the cores.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from dataclasses import replace
from typing import Any, Protocol

from nucleiseg.bundle import ModelSpec
from nucleiseg.inference.item import ItemStep, Outcome, load_segmenter
from nucleiseg.inference.record import failure_record
from nucleiseg.inference.segmenter import Segmenter
from nucleiseg.inference.workers import Schedule, run_schedule
from nucleiseg.io.labels import InputItem

__all__ = ["Executor", "ProcessExecutor", "SerialExecutor", "ThreadExecutor", "available_cpus"]

_STATE: dict[str, Any] = {}


def available_cpus() -> int:
    """CPU cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def largest_first(items: Sequence[InputItem]) -> list[int]:
    """Indices of ``items``, largest image file first (a cheap proxy for the work an image takes).

    Parallel executors start the big images first, so the small ones fill the gaps at the end
    instead of one worker finishing a big image alone.
    """

    def size(i: int) -> int:
        try:
            return os.path.getsize(items[i].image_path)
        except OSError:  # a missing file fails in its step, with its one-line error
            return 0

    return sorted(range(len(items)), key=lambda i: (-size(i), i))


class Executor(Protocol):
    """Runs the per-image step over items."""

    def map(self, step: ItemStep, items: Sequence[InputItem]) -> Iterator[tuple[int, Outcome]]:
        """Yield ``(index, outcome)`` for every item, in completion order."""
        ...

    def describe(self) -> dict[str, Any]:
        """``run.json``'s ``executor`` entry."""
        ...


class SerialExecutor:
    """Segment the items one after the other with ``segmenter``, in this process."""

    def __init__(self, segmenter: Segmenter) -> None:
        self.segmenter = segmenter

    def map(self, step: ItemStep, items: Sequence[InputItem]) -> Iterator[tuple[int, Outcome]]:
        """Yield ``(index, outcome)`` in input order."""
        for index, item in enumerate(items):
            yield index, step(item, self.segmenter)

    def describe(self) -> dict[str, Any]:
        """``{"kind": "serial", "workers": 1}``."""
        return {"kind": "serial", "workers": 1}


class ThreadExecutor:
    """Segment ``workers`` images at a time with one shared ``segmenter``, in this process.

    The default for a folder on a CPU: with the network runtime on one thread per call (ONNX
    Runtime sessions and PyTorch modules may be run from several threads at once, and release the
    GIL while they compute), each core works on its own image, and the post-processing of one
    image overlaps the network of another. No process start, no second copy of the model.
    """

    def __init__(self, segmenter: Segmenter, workers: int) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.segmenter = segmenter
        self.workers = workers
        self._futures: dict[Future, int] = {}

    def cancel(self) -> None:
        """Drop the images not started yet; :meth:`map` still yields those in progress."""
        for future in list(self._futures):
            future.cancel()

    def map(self, step: ItemStep, items: Sequence[InputItem]) -> Iterator[tuple[int, Outcome]]:
        """Yield ``(index, outcome)`` as images finish (largest files started first, so no core idles at the end)."""
        with ThreadPoolExecutor(self.workers, thread_name_prefix="nucleiseg") as pool:
            futures = {pool.submit(step, items[i], self.segmenter): i for i in largest_first(items)}
            self._futures = futures
            try:
                for future in as_completed(futures):
                    if not future.cancelled():
                        yield futures[future], future.result()
            except BaseException:  # interrupted: drop the images still queued
                for future in futures:
                    future.cancel()
                raise

    def describe(self) -> dict[str, Any]:
        """``{"kind": "threads", "workers": N}``."""
        return {"kind": "threads", "workers": self.workers}


def _init(spec: ModelSpec) -> None:
    try:
        _STATE["segmenter"] = load_segmenter(spec)
    except Exception as exc:  # noqa: BLE001 - every image of this worker reports it, the pool stays usable
        _STATE["error"] = f"the worker could not load the model: {exc}"


def _work(step: ItemStep, item: InputItem) -> Outcome:
    if "error" in _STATE:
        return {"failure": failure_record(item, RuntimeError(_STATE["error"]))}
    return step(item, _STATE["segmenter"])


class ProcessExecutor:
    """A pool of ``workers`` processes (spawned), each loading the model of ``spec`` once.

    A worker that dies (out of memory, killed, a crash in native code) breaks the pool: a fresh
    pool takes over, and each image that was in progress is tried again, alone in it (so a
    second death is that image's own). Only an image that kills two workers is reported, as
    "worker died on this image"; the others are not charged (:mod:`nucleiseg.inference.workers`).

    Parameters
    ----------
    spec : ModelSpec
        The model the workers load; its ``threads`` (default: the available cores divided by
        ``workers``, at least 1) are each worker's threads.
    workers : int
        Worker processes (at least 1).
    """

    def __init__(self, spec: ModelSpec, workers: int) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.workers = workers
        self.spec = spec if spec.threads else replace(spec, threads=max(1, available_cpus() // workers))
        self._schedule: Schedule | None = None

    def cancel(self) -> None:
        """Drop the images not started yet; :meth:`map` still yields those in progress."""
        if self._schedule is not None:
            self._schedule.cancel()

    def map(self, step: ItemStep, items: Sequence[InputItem]) -> Iterator[tuple[int, Outcome]]:
        """Yield ``(index, outcome)`` as the workers finish images; see the class for dead workers."""
        if not items:
            return
        schedule = Schedule(largest_first(items), min(self.workers, len(items)))
        self._schedule = schedule
        yield from run_schedule(schedule, lambda: _pool(self.spec, schedule.width), _work, step, items)

    def describe(self) -> dict[str, Any]:
        """``{"kind": "processes", "workers": N, "threads": per worker}`` (and ``retried`` images after a worker died)."""
        found = {"kind": "processes", "workers": self.workers, "threads": self.spec.threads}
        retried = self._schedule.retried if self._schedule is not None else 0
        return {**found, "retried": retried} if retried else found


def _pool(spec: ModelSpec, workers: int) -> ProcessPoolExecutor:
    context = multiprocessing.get_context("spawn")  # fork is unsafe once OpenMP threads exist
    return ProcessPoolExecutor(workers, mp_context=context, initializer=_init, initargs=(spec,))
