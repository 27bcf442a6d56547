"""Counting over whole label images in bounded memory.

``np.bincount`` converts its input to ``intp`` first: on a whole ``int32`` label image that is
an 8-byte copy per pixel (512 MB at 64 Mpx). These helpers read the image :data:`CHUNK` pixels at
a time, so their temporaries are the size of a chunk (8 MB of ``intp``).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

__all__ = ["CHUNK", "chunks", "label_sizes"]

#: Pixels per step of the chunked reductions.
CHUNK = 1 << 20


def chunks(flat: np.ndarray, dtype: type | None = np.intp) -> Iterator[np.ndarray]:
    """A flat array in :data:`CHUNK`-pixel pieces, each as ``dtype`` (None: views, as they are)."""
    for start in range(0, flat.size, CHUNK):
        piece = flat[start : start + CHUNK]
        yield piece if dtype is None else piece.astype(dtype, copy=False)


def label_sizes(labels: np.ndarray) -> np.ndarray:
    """Pixels per id of a non-negative integer label image: ``np.bincount(labels.ravel())``, in chunks."""
    flat = labels.ravel()
    sizes = np.zeros(int(flat.max(initial=0)) + 1, np.intp)
    for chunk in chunks(flat):
        sizes += np.bincount(chunk, minlength=sizes.size)
    return sizes
