"""Memory per megapixel: the block-wise switch and the resident-memory benchmark's small sizes."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from nucleiseg.benchmark.memory import label_mosaic, mosaic, mosaic_sources, mosaic_truth
from nucleiseg.distributed.stream import Renumber
from nucleiseg.heap import map_large_blocks, trim_heap
from nucleiseg.inference.item import segment_one
from nucleiseg.inference.segmenter import Segmenter
from nucleiseg.inference.tiling import BATCH_PIXELS, predict_tiled
from nucleiseg.io.images import read_labels, write_image
from nucleiseg.io.labels import InputItem
from nucleiseg.io.layout import OutputOptions
from nucleiseg.metrics.matching import match_labels

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def segmenter() -> Segmenter:
    return Segmenter.from_pretrained("default")


@pytest.fixture(scope="module")
def sources(dsb_root: Path) -> list[np.ndarray]:
    return mosaic_sources(dsb_root, n=9)


def test_large_tiles_go_to_the_network_one_at_a_time() -> None:
    calls = []

    def record(batch: np.ndarray) -> np.ndarray:
        calls.append(batch.shape)
        return np.full((batch.shape[0], 2, *batch.shape[2:]), 0.5, np.float32)

    out = predict_tiled(record, np.zeros((3, 2048, 2048), np.float32), tile=1024, batch_size=4, stride=32)
    assert out.shape == (2, 2048, 2048) and np.allclose(out, 0.5)
    assert len(calls) == 16 and all(b == 1 and h * w > BATCH_PIXELS for b, _, h, w in calls)  # 640-pixel windows
    calls.clear()
    predict_tiled(record, np.zeros((3, 512, 512), np.float32), tile=256, batch_size=4, stride=32)
    assert [c[0] for c in calls] == [4, 4, 1]  # small tiles are still batched


def test_heap_trim_returns_freed_memory_to_the_os() -> None:
    psutil = pytest.importorskip("psutil")
    if not trim_heap():
        pytest.skip("not glibc")
    proc = psutil.Process()
    blocks = [bytearray(100_000) for _ in range(3000)]  # 300 MB of heap blocks (below the mmap threshold)
    keep = blocks[-1]  # pins the top of the heap, so free() alone cannot shrink it
    del blocks
    held = proc.memory_info().rss
    trim_heap()
    assert held - proc.memory_info().rss > 150 * 1024 * 1024
    assert keep and map_large_blocks()


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


def test_cli_step_streams_large_masks_into_a_tiled_tiff(segmenter: Segmenter, sources: list[np.ndarray], tmp_path: Path) -> None:
    image = mosaic(sources, 700, 650)  # edge blocks narrower than the TIFF tiles
    write_image(tmp_path / "big.png", image)
    infer = replace(segmenter.config.infer, block_pixels=100_000, block=256, diameter=18.0)
    post = segmenter.config.postprocess
    item = InputItem("big", tmp_path / "big.png")
    outcome = segment_one(item, segmenter, tmp_path / "out", OutputOptions(), infer, post)
    record = outcome["record"]
    assert record["outputs"] == ["big_masks.tif"] and "blocks" in record["timings"]
    written = read_labels(tmp_path / "out" / "big_masks.tif")
    held = segmenter.segment(image, infer, post, keep_probabilities=False).labels  # block-wise, held whole
    assert written.shape == image.shape and np.array_equal(written, held)
    assert record["count"] == int(held.max()) > 150


@pytest.mark.slow
def test_blockwise_memory_grows_by_at_most_a_few_bytes_per_pixel(dsb_root: Path) -> None:
    # A fresh process: streaming 1 and 4 Mpx of real nuclei block-wise into a _masks.tif.
    # The whole-image path needed about 50 MB more per megapixel (network outputs, labels and
    # post-processing arrays of the whole image); block-wise only the image itself grows.
    code = "import json, sys; from nucleiseg.benchmark.memory import blockwise_peaks; print(json.dumps(blockwise_peaks(sys.argv[1], [1000, 2000])))"
    cmd = [sys.executable, "-c", code, str(dsb_root)]
    peaks = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=900).stdout)
    slope = (peaks["2000"] - peaks["1000"]) / 3.0  # MiB per extra megapixel
    assert slope < 8.0, peaks
    assert peaks["2000"] - peaks["startup"] < 400, peaks  # one tile and three rows of tile labels


def test_label_mosaic_lays_out_the_truth_of_the_image_mosaic(dsb_root: Path, sources: list[np.ndarray]) -> None:
    """The memory benchmark's ``/api/evaluate`` ground truth: each copy of a source image gets its
    own masks, with ids of its own, at the same place as in :func:`mosaic`."""
    truth = mosaic_truth(dsb_root, n=9)
    assert len(truth) == len(sources) and all(t.shape == s.shape for t, s in zip(truth, sources, strict=True))
    height, width = 700, 1100  # not whole tiles
    labels = label_mosaic(truth, height, width)
    marks = [np.where(t > 0, k + 1, 0).astype(np.uint8) for k, t in enumerate(truth)]  # which source, per pixel
    np.testing.assert_array_equal(mosaic(marks, height, width) > 0, labels > 0)
    images = mosaic(sources, height, width)
    inside = labels > 0
    assert images[inside].mean() > images[~inside].mean() + 20  # the masks sit on the nuclei
    tiles = [(top, left) for top in range(0, height, 256) for left in range(0, width, 256)]
    expected = sum(len(np.unique(labels[t : t + 256, l : l + 256])) - 1 for t, l in tiles)
    assert len(np.unique(labels)) - 1 == expected  # no id shared between copies
