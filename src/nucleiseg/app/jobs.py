"""Long-running jobs of the web app: one queue per kind, one job of a kind running at a time.

A job (training, dataset evaluation) is a runner function executed in a worker thread of its
kind; a second job of the same kind waits in that kind's queue. Runners report progress through
:meth:`Job.update`, look at :attr:`Job.stop_requested` between steps, and raise
:class:`JobFailed` with a one-line message for an expected failure (a bad dataset, a crashed
training process). Job records live in memory (the newest :attr:`JobManager.max_kept`); training
runs also persist as run folders, so a restart keeps the finished models.

States: ``queued`` -> ``running`` -> ``finished`` | ``failed`` | ``stopped`` (stopped while
running: a training run keeps what it learnt so far); a queued job that is stopped becomes
``cancelled`` without running.
"""

from __future__ import annotations

import collections
import copy
import itertools
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nucleiseg.app.limits import api_error

__all__ = ["Job", "JobFailed", "JobManager", "TERMINAL"]

log = logging.getLogger("nucleiseg.app")
TERMINAL = ("finished", "failed", "stopped", "cancelled")
Runner = Callable[["Job"], dict[str, Any] | None]


class JobFailed(Exception):
    """An expected failure of a job; its message is shown to the user as is (one line)."""


@dataclass
class Job:
    """One job: its public record (:meth:`snapshot`) and the runner's private state."""

    id: str
    kind: str
    params: dict[str, Any]
    command: str
    runner: Runner
    state: str = "queued"
    created: float = field(default_factory=time.time)
    started: float | None = None
    ended: float | None = None
    progress: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    result: dict[str, Any] | None = None
    version: int = 0
    private: dict[str, Any] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def stop_requested(self) -> bool:
        """True once the user asked to stop (or the server is shutting down)."""
        return self._stop.is_set()

    def clear_stop(self) -> None:
        """Forget a stop request (a training run validates after a stop; a second stop ends that too)."""
        self._stop.clear()

    def request_stop(self) -> None:
        """Ask the runner to stop at its next check."""
        self._stop.set()

    def wait_stop(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True as soon as a stop was requested."""
        return self._stop.wait(seconds)

    def update(self, **progress: Any) -> None:
        """Merge progress fields (thread-safe) and bump the version the event stream watches."""
        with self._lock:
            self.progress.update(progress)
            self.version += 1

    def _set(self, **fields: Any) -> None:
        with self._lock:
            for key, value in fields.items():
                setattr(self, key, value)
            self.version += 1

    def snapshot(self) -> dict[str, Any]:
        """JSON-ready public record."""
        with self._lock:
            now = self.ended or time.time()
            return {
                "id": self.id, "kind": self.kind, "state": self.state, "params": copy.deepcopy(self.params),
                "command": self.command, "created": self.created, "started": self.started, "ended": self.ended,
                "elapsed_s": None if self.started is None else round(now - self.started, 1),
                "progress": copy.deepcopy(self.progress), "error": self.error,
                "result": copy.deepcopy(self.result), "version": self.version,
            }


class JobManager:
    """Queues and workers of the app's jobs.

    Parameters
    ----------
    max_kept : int
        Finished job records kept in memory; older ones are forgotten (their ``on_forget``
        hook, if any, is called to free disk space).
    """

    def __init__(self, max_kept: int = 50) -> None:
        self.max_kept = max_kept
        self._jobs: dict[str, Job] = {}
        self._queues: dict[str, collections.deque[Job]] = {}
        self._workers: dict[str, threading.Thread] = {}
        self._wake: dict[str, threading.Condition] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._counter = itertools.count(1)

    def submit(self, kind: str, params: dict[str, Any], command: str, runner: Runner) -> Job:
        """Queue a job of ``kind``; it starts as soon as no other job of that kind runs."""
        if self._closed:
            raise api_error(503, "the server is shutting down")
        job = Job(f"{kind}-{next(self._counter)}-{uuid.uuid4().hex[:6]}", kind, params, command, runner)
        with self._lock:
            self._jobs[job.id] = job
            queue = self._queues.setdefault(kind, collections.deque())
            wake = self._wake.setdefault(kind, threading.Condition(self._lock))
            queue.append(job)
            position = len(queue) - 1 + (1 if self._running(kind) else 0)
            job.progress["queue_position"] = position
            if kind not in self._workers:
                worker = threading.Thread(target=self._work, args=(kind,), name=f"nucleiseg-{kind}", daemon=True)
                self._workers[kind] = worker
                worker.start()
            wake.notify_all()
            self._forget_old()
        return job

    def _running(self, kind: str) -> bool:
        return any(j.kind == kind and j.state == "running" for j in self._jobs.values())

    def get(self, job_id: str) -> Job:
        """The job with this id, or 404."""
        job = self._jobs.get(job_id)
        if job is None:
            raise api_error(404, f"no job '{job_id}' (finished jobs are kept for a while only)")
        return job

    def list(self) -> list[dict[str, Any]]:
        """Snapshots of every known job, newest first (results left out)."""
        return [{**j.snapshot(), "result": None} for j in sorted(self._jobs.values(), key=lambda j: -j.created)]

    def stop(self, job_id: str) -> Job:
        """Cancel a queued job, or ask a running one to stop (it ends as ``stopped``)."""
        job = self.get(job_id)
        with self._lock:
            queue = self._queues.get(job.kind, collections.deque())
            if job in queue:
                queue.remove(job)
                job.state, job.ended = "cancelled", time.time()
                job.version += 1
                self._renumber(job.kind)
                return job
        if job.state == "running":
            job.request_stop()
            job.update(stop_requested=True)
        return job

    def _renumber(self, kind: str) -> None:
        for k, queued in enumerate(self._queues.get(kind, ())):
            queued.progress["queue_position"] = k + 1
            queued.version += 1

    def _work(self, kind: str) -> None:
        queue, wake = self._queues[kind], self._wake[kind]
        while True:
            with self._lock:
                while not queue and not self._closed:
                    wake.wait()
                if self._closed:
                    return
                job = queue.popleft()
                job.state, job.started = "running", time.time()
                job.progress.pop("queue_position", None)
                job.version += 1
                self._renumber(kind)
            self._execute(job)

    def _execute(self, job: Job) -> None:
        try:
            result = job.runner(job)
            state = "stopped" if job.stop_requested else "finished"
            job._set(state=state, result=result, ended=time.time())
        except JobFailed as exc:
            job._set(state="failed", error=" ".join(str(exc).split()) or "the job failed", ended=time.time())
        except Exception as exc:  # noqa: BLE001 - reported on the job, details in the log
            log.error("job %s failed unexpectedly", job.id, exc_info=exc)
            job._set(state="failed", error=f"internal error ({type(exc).__name__}); see the server log", ended=time.time())

    def _forget_old(self) -> None:
        done = sorted((j for j in self._jobs.values() if j.state in TERMINAL), key=lambda j: j.created)
        for job in done[: max(0, len(done) - self.max_kept)]:
            hook = job.private.get("on_forget")
            if callable(hook):
                hook()
            del self._jobs[job.id]

    def shutdown(self, timeout: float = 20.0) -> None:
        """Cancel queued jobs, stop running ones and wait for their workers (server exit)."""
        with self._lock:
            self._closed = True
            for kind, queue in self._queues.items():
                while queue:
                    job = queue.popleft()
                    job.state, job.ended = "cancelled", time.time()
                self._wake[kind].notify_all()
        for job in list(self._jobs.values()):
            if job.state == "running":
                job.request_stop()
        deadline = time.monotonic() + timeout
        for worker in self._workers.values():
            worker.join(max(0.1, deadline - time.monotonic()))
