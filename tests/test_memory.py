"""Memory per megapixel: the block-wise switch and the resident-memory benchmark's small sizes."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from nucleiseg.benchmark.memory import child_peak_rss, mosaic, mosaic_sources
from nucleiseg.distributed.stream import Renumber
from nucleiseg.inference.segmenter import Segmenter
from nucleiseg.metrics.matching import match_labels

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def segmenter() -> Segmenter:
    return Segmenter.from_pretrained("default")


@pytest.fixture(scope="module")
def sources(dsb_root: Path) -> list[np.ndarray]:
    return mosaic_sources(dsb_root, n=9)


def test_renumber_gives_one_number_per_nucleus_across_tiles() -> None:
    renumber = Renumber()
    left = renumber(np.array([[0, 500, 500], [70, 70, 0]]))
    right = renumber(np.array([[500, 0, 9], [0, 9, 9]]))
    assert left.tolist() == [[0, 2, 2], [1, 1, 0]]
    assert right.tolist() == [[2, 0, 3], [0, 3, 3]]
    assert renumber.count == 3


def test_blockwise_matches_whole_image_on_a_mosaic_of_real_nuclei(segmenter: Segmenter, sources: list[np.ndarray]) -> None:
    image = mosaic(sources, 768, 768)  # a 3 x 3 mosaic of real DSB images
    infer = segmenter.config.infer
    whole = segmenter.segment(image, replace(infer, block_pixels=0), keep_probabilities=False)
    blocked = replace(infer, block_pixels=100_000, block=256)
    assert segmenter.goes_blockwise(image.shape, blocked)
    tiled = segmenter.segment(image, blocked, keep_probabilities=False)
    assert tiled.probabilities is None and tiled.timings["blocks"] > 0
    assert whole.scale == tiled.scale == 1.0
    assert tiled.diameter == pytest.approx(whole.diameter, rel=0.02)
    assert np.array_equal(np.unique(tiled.labels), np.arange(tiled.count + 1))  # ids 1..n
    assert whole.count > 200
    assert abs(tiled.count - whole.count) <= 0.02 * whole.count
    match = match_labels(whole.labels, tiled.labels, [0.5, 0.9])
    assert match.competition_score > 0.95  # nearly every nucleus the same, seams included
