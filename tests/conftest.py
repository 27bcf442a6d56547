"""Shared fixtures: the real DSB training folder beside the repo and synthetic disk images."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

REPO = Path(__file__).resolve().parents[1]
DSB_ROOT = Path(os.environ.get("NUCLEISEG_DSB", REPO.parent / "shared" / "data" / "dsb2018" / "stage1_train"))

# A few real images of different kinds (fluorescence, brightfield, stained tissue), small ones first.
REAL_IDS = [
    "00071198d059ba7f5914a526d124d28e6d010c92466da21d4a04cd5413362552",
    "003cee89357d9fe13516167fd67b609a164651b21934585648c740d2c3d86dc1",
]


@pytest.fixture(scope="session")
def dsb_root() -> Path:
    """Path of the DSB 2018 stage1_train folder (must exist: CI runs with ../shared beside)."""
    assert DSB_ROOT.is_dir(), f"DSB training data not found at {DSB_ROOT}"
    return DSB_ROOT


@pytest.fixture(scope="session")
def real_sample_dirs(dsb_root: Path) -> list[Path]:
    """Sample folders of a few real DSB images."""
    return [dsb_root / i for i in REAL_IDS]


def disk_labels(shape: tuple[int, int], centers: list[tuple[float, float]], radius: float) -> np.ndarray:
    """Label image with one disk per centre (later disks overwrite earlier ones), ids 1..n."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, np.int32)
    for k, (cy, cx) in enumerate(centers, start=1):
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = k
    return labels


@pytest.fixture
def make_disks():
    """Factory fixture: ``make_disks(shape, centers, radius) -> labels``."""
    return disk_labels
