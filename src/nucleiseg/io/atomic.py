"""Atomic file output: write to a temporary file beside the target, then rename.

Also the output side of the batch fault policy: :class:`OutputError` (the output folder cannot
take more files: full, read-only, no permission, over quota; the batch stops) and
:func:`remove_stale_temps` (the temporary files a killed run leaves behind; ``--resume`` removes them).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "OUTPUT_ERRNOS", "STALE_TEMP", "OutputError", "atomic_path", "atomic_write_bytes", "atomic_write_text",
    "output_fault", "remove_stale_temps",
]

#: Errors of the output folder that no later image can avoid: the batch stops at the first.
OUTPUT_ERRNOS = frozenset({errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT})
#: Names of the temporary files and folders of :func:`atomic_path` and the block-wise writer
#: (``.<stem>.<8 random characters>.tmp[<suffix>]``).
STALE_TEMP = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp(\.[A-Za-z0-9]+)?$")


class OutputError(Exception):
    """The output folder cannot take more files (disk full, read-only, no permission, over quota).

    Attributes
    ----------
    folder : Path
        The output folder.
    record : object
        What the batch had done when it stopped (a :class:`~nucleiseg.inference.record.RunRecord`),
        set by the batch driver.
    """

    def __init__(self, message: str, folder: str | Path) -> None:
        super().__init__(message)
        self.folder = Path(folder)
        self.record: object = None


def output_fault(exc: BaseException, folder: str | Path) -> OutputError | None:
    """An :class:`OutputError` when ``exc`` is an output-folder error (see :data:`OUTPUT_ERRNOS`), else None.

    An error on a file outside ``folder`` (reading the ground truth for an overlay, say) is not
    one: it stays the error of that image.
    """
    if not isinstance(exc, OSError) or exc.errno not in OUTPUT_ERRNOS:
        return None
    folder = Path(folder).absolute()
    name = exc.filename if isinstance(exc.filename, (str, os.PathLike)) else None
    if name is not None and folder not in (Path(name).absolute(), *Path(name).absolute().parents):
        return None
    cause = os.strerror(exc.errno) if exc.errno else str(exc)
    writing = f" (writing {_target_name(Path(name).name)})" if name is not None and Path(name).absolute() != folder else ""
    return OutputError(f"cannot write to the output folder {folder}: {cause}{writing}", folder)


def _target_name(name: str) -> str:
    """The file a temporary name of :func:`atomic_path` stands for (``.a.x1y2z3w4.tmp.tif`` -> ``a.tif``)."""
    found = re.match(r"^\.(.+)\.[a-z0-9_]{8}\.tmp(\.[A-Za-z0-9]+)?$", name)
    return name if found is None else found.group(1) + (found.group(2) or "")


def remove_stale_temps(folder: str | Path) -> list[str]:
    """Remove the temporary files and folders an interrupted run left in ``folder``; their names.

    Only names of the form :data:`STALE_TEMP` are touched. Call it when no other run writes to
    the folder (``--resume`` does).
    """
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        if not STALE_TEMP.match(entry.name):
            continue
        try:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        except FileNotFoundError:
            continue
        removed.append(entry.name)
    return sorted(removed)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto ``path`` on success.

    On any exception (including ``KeyboardInterrupt``) the temporary file is removed and the
    target is left untouched, so no half-written output ever appears under the final name.
    The temporary name keeps the target's suffix so writers that dispatch on it still work.

    Examples
    --------
    >>> import numpy as np, tifffile
    >>> with atomic_path("labels.tif") as tmp:  # doctest: +SKIP
    ...     tifffile.imwrite(tmp, np.zeros((4, 4), np.uint16))
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; outputs are ordinary readable files
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))
