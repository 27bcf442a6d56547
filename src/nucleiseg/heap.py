"""Give freed memory back to the operating system."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

__all__ = ["trim_heap"]


@functools.lru_cache(maxsize=1)
def _libc_trim() -> object | None:
    """glibc's ``malloc_trim``, or None on other C libraries (macOS, musl, Windows)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None


def trim_heap() -> bool:
    """Return freed heap pages to the OS (glibc ``malloc_trim(0)``); True when it ran.

    glibc keeps the memory of freed small and medium blocks in its arenas, so after a large
    image a process can hold gigabytes it no longer uses; trimming returns them. Elsewhere this
    does nothing (those allocators, or the OS, reclaim on their own terms).
    """
    trim = _libc_trim()
    if trim is None:
        return False
    trim(0)  # type: ignore[operator]
    return True
