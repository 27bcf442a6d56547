"""Worker processes that die: which image was to blame, and a fresh pool for the rest.

When one process of a :class:`~concurrent.futures.ProcessPoolExecutor` dies (killed for memory,
a crash in native code), the pool is broken and every image in progress or queued fails with
"A process in the process pool was terminated abruptly". :func:`run_schedule` keeps only as
many images in flight as there are workers, so a death concerns those few; it starts a fresh
pool and tries each of them again *alone* (nothing else in flight), so a second death is that
image's own. Only an image that died with two workers is reported, as :data:`WORKER_DIED`;
images queued behind it never notice.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Executor, Future, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

from nucleiseg.inference.record import failure_record

__all__ = ["WORKER_DIED", "Schedule", "run_schedule"]

#: The failure of an image that killed two worker processes.
WORKER_DIED = "worker died on this image (twice: out of memory, killed, or a crash in native code)"


@dataclass
class Schedule:
    """Which images are still to run: the queue, the suspects of a worker death, deaths per image.

    Parameters
    ----------
    order : sequence of int
        Indices of the images, in the order to start them.
    width : int
        Images in flight at once (the pool's workers).
    """

    order: Sequence[int]
    width: int
    queue: collections.deque[int] = field(init=False)
    suspects: collections.deque[int] = field(default_factory=collections.deque)
    deaths: dict[int, int] = field(default_factory=dict)
    retried: int = 0

    def __post_init__(self) -> None:
        self.queue = collections.deque(self.order)

    def cancel(self) -> None:
        """Start nothing more (the images in flight still finish)."""
        self.queue.clear()
        self.suspects.clear()

    def take(self, in_flight: int) -> list[int]:
        """Images to start now: a suspect alone when nothing is in flight, else fill up to ``width``."""
        if self.suspects:
            return [self.suspects.popleft()] if in_flight == 0 else []
        count = max(0, self.width - in_flight)
        return [self.queue.popleft() for _ in range(min(count, len(self.queue)))]

    def put_back(self, index: int) -> None:
        """Start ``index`` first next time (it could not be submitted)."""
        (self.suspects if index in self.deaths else self.queue).appendleft(index)

    def died(self, index: int) -> bool:
        """Charge a death to ``index``; True when it is its second (report it), else it is retried alone."""
        self.deaths[index] = self.deaths.get(index, 0) + 1
        if self.deaths[index] >= 2:
            return True
        self.suspects.append(index)
        self.retried += 1
        return False


def _settle(futures: dict[Future, int], done: set[Future], items: Sequence[Any]) -> tuple[list[tuple[int, Any]], list[int]]:
    """Outcomes of the finished futures, and the indices whose worker died."""
    outcomes, dead = [], []
    for future in done:
        index = futures.pop(future)
        try:
            outcomes.append((index, future.result()))
        except BrokenProcessPool:
            dead.append(index)
        except Exception as exc:  # noqa: BLE001 - e.g. an outcome that cannot be sent back: that image's error
            outcomes.append((index, {"failure": failure_record(items[index], exc)}))
    return outcomes, dead


def _submit(pool: Executor, schedule: Schedule, futures: dict[Future, int], work: Callable[..., Any], step: Any,
            items: Sequence[Any]) -> bool:
    """Start what the schedule allows; True when the pool turned out to be broken."""
    taken = schedule.take(len(futures))
    for k, index in enumerate(taken):
        try:
            futures[pool.submit(work, step, items[index])] = index
        except BrokenProcessPool:
            for rest in reversed(taken[k:]):
                schedule.put_back(rest)
            return True
    return False


def run_schedule(
    schedule: Schedule, make_pool: Callable[[], Executor], work: Callable[..., Any], step: Any, items: Sequence[Any],
) -> Iterator[tuple[int, Any]]:
    """Run ``work(step, items[i])`` on a process pool for every scheduled index; yield ``(i, outcome)``.

    A broken pool is replaced by a fresh one from ``make_pool``; see the module docstring.
    """
    pool = make_pool()
    futures: dict[Future, int] = {}
    try:
        while True:
            broken = _submit(pool, schedule, futures, work, step, items)
            if not futures:
                if not broken:
                    return
                pool.shutdown(wait=True, cancel_futures=True)  # a worker died idle: nothing to charge
                pool = make_pool()
                continue
            done, _ = wait(futures, return_when=FIRST_COMPLETED)
            outcomes, dead = _settle(futures, done, items)
            if dead or broken:  # the pool is broken: what was still in flight fails too (at once)
                more, also = _settle(futures, wait(futures)[0], items)
                outcomes, dead = outcomes + more, dead + also
            yield from outcomes
            for index in dead:
                if schedule.died(index):
                    yield index, {"failure": failure_record(items[index], RuntimeError(WORKER_DIED))}
            if dead or broken:
                pool.shutdown(wait=True, cancel_futures=True)
                pool = make_pool()
    finally:
        for future in futures:
            future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
