"""The vectorised measurements equal scikit-image's regionprops_table, nucleus by nucleus."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from nucleiseg.io.images import read_image
from nucleiseg.io.measure import measure, measure_regionprops

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _assert_same(fast: pd.DataFrame, ref: pd.DataFrame) -> None:
    assert list(fast.columns) == list(ref.columns)
    assert fast.dtypes.to_dict() == ref.dtypes.to_dict()
    assert fast["label"].tolist() == ref["label"].tolist()
    np.testing.assert_allclose(fast.to_numpy(np.float64), ref.to_numpy(np.float64), rtol=1e-9, atol=1e-9)


def test_odd_shapes_touching_nuclei_and_borders() -> None:
    """Lines, single pixels, holes, sparse ids, touching nuclei and nuclei cut by the image edge."""
    labels = np.zeros((40, 50), np.uint16)
    labels[0:6, 0:9] = 3  # cut by two image edges
    labels[10, 10] = 7  # one pixel
    labels[12:30, 20] = 8  # one-pixel-wide line
    labels[5:25, 30:50] = 40  # a square with a hole, touching the right edge
    labels[12:16, 38:42] = 0
    labels[25:35, 30:45] = 41  # touches 40
    rr, cc = np.mgrid[:40, :50]
    labels[(rr - 30) ** 2 / 30 + (cc - 8) ** 2 / 6 < 4] = 1000  # a tilted-ish ellipse
    image = np.random.default_rng(0).integers(0, 4000, (40, 50, 3)).astype(np.uint16)
    _assert_same(measure(labels, image), measure_regionprops(labels, image))
    _assert_same(measure(labels), measure_regionprops(labels))


def test_random_label_images() -> None:
    rng = np.random.default_rng(1)
    for _ in range(5):
        labels = rng.integers(0, 6, (30, 37)).astype(np.int32)  # fragmented, many touching pieces
        labels[rng.random(labels.shape) < 0.3] = 0
        image = rng.random(labels.shape)
        _assert_same(measure(labels, image), measure_regionprops(labels, image))
        _assert_same(measure(labels), measure_regionprops(labels))


@pytest.mark.parametrize("seed", range(6))
def test_blobs_of_every_shape(seed: int) -> None:
    """Smooth and ragged blobs, concave and convex, some ids split over several pieces: the
    row-by-row convex hulls behind solidity count exactly the pixels scikit-image's hulls do."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    h, w = rng.integers(40, 160, 2)
    noise = ndi.gaussian_filter(rng.random((h, w)), rng.uniform(0.7, 4.0))
    labels, n = ndi.label(noise > np.quantile(noise, rng.uniform(0.3, 0.85)))
    if seed % 2:  # one id over several disconnected pieces
        labels = np.where(labels > 0, labels % max(1, n // 3) + 1, 0)
    fast, ref = measure(labels), measure_regionprops(labels)
    assert len(ref) >= 3 and (ref["solidity"] < 0.9).any()  # concave shapes are in the test
    _assert_same(fast, ref)


@pytest.mark.parametrize("name", ["fluo_small", "tissue_he", "brightfield"])
def test_real_ground_truth(name: str) -> None:
    labels = tifffile.imread(EXAMPLES / f"{name}_masks.tif")
    image = read_image(EXAMPLES / f"{name}.png")
    _assert_same(measure(labels, image), measure_regionprops(labels, image))


@pytest.mark.parametrize("nuclei", [False, True])
def test_measure_takes_no_float_copy_of_the_image(nuclei: bool, traced_peak) -> None:
    """Intensities are read at the nuclei's pixels only: no whole-image float64 copy (8 bytes per pixel),
    also when there is no nucleus at all (the web app's answer for an empty image used to take it)."""
    image = np.full((2000, 2000), 7, np.uint8)
    labels = np.zeros(image.shape, np.int32)
    if nuclei:
        labels[100:110, 100:110], labels[500:520, 900:930] = 1, 2
    table, peak = traced_peak(lambda: measure(labels, image))
    # the float64 copy alone was 8 bytes per pixel (13 in all with two nuclei, 8 with none)
    assert peak < (7 if nuclei else 1) * image.size
    assert len(table) == (2 if nuclei else 0)
    if nuclei:
        assert table["mean_intensity"].tolist() == [7.0, 7.0] and table["max_intensity"].tolist() == [7.0, 7.0]
