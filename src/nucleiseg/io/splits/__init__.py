"""Fixed, committed image lists: which external images are held out for measuring only.

``bbbc039_heldout.txt`` names the 40 BBBC039 images (of the 156 in
``../shared/data/external/bbbc039``) that the accuracy suite measures on and that no training
recipe may use. It was made once with :func:`heldout_ids` (seed 2018, the same SHA-1 ranking as
the DSB validation split) and is read from the file from then on, so adding images to the folder
never moves an image between training and measuring.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

__all__ = ["BBBC039_HELDOUT_FILE", "bbbc039_heldout", "bbbc039_training", "heldout_ids"]

BBBC039_HELDOUT_FILE = Path(__file__).with_name("bbbc039_heldout.txt")


def heldout_ids(ids: Sequence[str], n: int, seed: int = 2018) -> list[str]:
    """The ``n`` ids ranked first by SHA-1 of ``"<seed>:<id>"`` (sorted): a split that depends only on the ids."""
    if n < 0 or n > len(ids):
        raise ValueError(f"n must be in 0..{len(ids)}, got {n}")
    ranked = sorted(ids, key=lambda i: hashlib.sha1(f"{seed}:{i}".encode()).hexdigest())
    return sorted(ranked[:n])


def bbbc039_heldout() -> list[str]:
    """Image names (file stems) of the committed BBBC039 held-out list."""
    return [line.strip() for line in BBBC039_HELDOUT_FILE.read_text().splitlines() if line.strip() and not line.startswith("#")]


def bbbc039_training(all_ids: Sequence[str]) -> list[str]:
    """The BBBC039 ids that training may use: every id not on the held-out list (sorted)."""
    held = set(bbbc039_heldout())
    return sorted(i for i in all_ids if i not in held)
