"""Resident-memory sampling for the benchmark (peak and growth per pass)."""

from __future__ import annotations

import threading
from collections.abc import Callable

__all__ = ["PeakRSS", "trim_heap"]


def _rss_reader() -> Callable[[], int]:
    """Current resident set size in bytes (psutil), or the process's peak so far without psutil."""
    try:
        import psutil
    except ImportError:  # psutil is optional: fall back to the kernel's high-water mark
        import resource
        import sys

        scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is in KiB on Linux, bytes on macOS
        return lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
    proc = psutil.Process()
    return lambda: int(proc.memory_info().rss)


class PeakRSS:
    """Context manager sampling the process's resident memory every ``interval`` seconds."""

    def __init__(self, interval: float = 0.005) -> None:
        self._read = _rss_reader()
        self._interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.start_bytes = self.peak_bytes = 0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, self._read())
            self._stop.wait(self._interval)

    def __enter__(self) -> PeakRSS:
        self.start_bytes = self.peak_bytes = self._read()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak_bytes = max(self.peak_bytes, self._read())


def trim_heap() -> None:
    """Give freed heap pages back to the OS (glibc ``malloc_trim``) so RSS growth is per pass."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None:
        return
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): growth is then an upper bound
        pass

