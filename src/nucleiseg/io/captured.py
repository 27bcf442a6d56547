"""Collect the warnings other packages emit while one file is read, instead of printing them.

A batch prints one line per bad file. Without this, a library's own complaints about the file
(tifffile logs "incorrect StripOffsets"; numpy warns about an overflow) would appear on stderr
before that line, unattributed, and interleaved between images on threads. Inside
:func:`captured`, warnings (:mod:`warnings`) and the log records of :data:`LOGGERS` raised by the
*current thread* go into a list; other threads keep the usual behaviour. The caller folds the
list into the file's one-line error, or into its record when the file was fine.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import warnings
from collections.abc import Iterator
from typing import Any

__all__ = ["LOGGERS", "captured", "fold"]

#: Loggers of the image readers whose records are collected.
LOGGERS = ("tifffile", "PIL", "imageio", "zarr")

_local = threading.local()
_lock = threading.Lock()
_users = 0
_saved_showwarning: Any = None


def _buffer() -> list[str] | None:
    return getattr(_local, "buffer", None)


def _note(text: str) -> None:
    buffer = _buffer()
    if buffer is not None and len(buffer) < 20:
        line = " ".join(str(text).split())
        if line not in buffer:
            buffer.append(line[:200])


def _showwarning(message: Any, category: type, filename: str, lineno: int, file: Any = None, line: str | None = None) -> None:
    if _buffer() is None:
        _saved_showwarning(message, category, filename, lineno, file, line)
        return
    _note(f"{category.__name__}: {message}")


class _Collect(logging.Filter):
    """Drops the records of capturing threads after noting them; passes the others on."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _buffer() is None or record.levelno < logging.WARNING:
            return True
        _note(f"{record.name}: {record.getMessage()}")
        return False


_FILTER = _Collect()


def _install() -> None:
    global _users, _saved_showwarning
    with _lock:
        if _users == 0:
            _saved_showwarning = warnings.showwarning
            warnings.showwarning = _showwarning
            for name in LOGGERS:
                logging.getLogger(name).addFilter(_FILTER)
        _users += 1


def _uninstall() -> None:
    global _users
    with _lock:
        _users -= 1
        if _users == 0:
            if warnings.showwarning is _showwarning:
                warnings.showwarning = _saved_showwarning
            for name in LOGGERS:
                logging.getLogger(name).removeFilter(_FILTER)


@contextlib.contextmanager
def captured() -> Iterator[list[str]]:
    """Collect this thread's warnings and reader log records (WARNING and above) into the yielded list.

    Warnings that the active filters turn into errors still raise; at most 20 distinct
    messages are kept, each cut to 200 characters.
    """
    outer = _buffer()
    buffer: list[str] = []
    _local.buffer = buffer
    _install()
    try:
        yield buffer
    finally:
        _local.buffer = outer
        _uninstall()


def fold(message: str, notes: list[str]) -> str:
    """``message`` with the first collected note appended (and how many more there were)."""
    if not notes:
        return message
    more = f"; {len(notes) - 1} more" if len(notes) > 1 else ""
    return f"{message} (while reading: {notes[0]}{more})"
