"""Give freed memory back to the operating system."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

__all__ = ["map_large_blocks", "trim_heap"]

M_MMAP_THRESHOLD = -3  # mallopt parameter number (glibc malloc.h)


@functools.lru_cache(maxsize=2)
def _glibc(function: str) -> object | None:
    """A function of glibc's allocator, or None on other C libraries (macOS, musl, Windows)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return getattr(ctypes.CDLL(name), function)
    except (OSError, AttributeError):
        return None


def trim_heap() -> bool:
    """Return freed heap pages to the OS (glibc ``malloc_trim(0)``); True when it ran.

    glibc keeps the memory of freed small and medium blocks in its arenas, so after a large
    image a process can hold gigabytes it no longer uses; trimming returns them. Elsewhere this
    does nothing (those allocators, or the OS, reclaim on their own terms).
    """
    trim = _glibc("malloc_trim")
    if trim is None:
        return False
    trim(0)  # type: ignore[operator]
    return True


def map_large_blocks(threshold: int = 256 * 1024) -> bool:
    """Serve every allocation of ``threshold`` bytes or more by its own ``mmap`` (glibc); True when set.

    glibc raises its mmap threshold after a large block is freed (up to 32 MB), so the arrays
    of the next large image come from the heap and their memory stays with the process after
    they are freed. A fixed threshold keeps image- and tile-sized arrays out of the heap: their
    memory returns to the OS the moment they are freed (measured: block-wise segmentation grew
    by 11 MB per megapixel with glibc's default and by 6 with 256 KB). Process-wide; set by the
    web app and by block-wise segmentation.
    """
    mallopt = _glibc("mallopt")
    if mallopt is None:
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, int(threshold)))  # type: ignore[operator]
