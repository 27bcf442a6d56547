"""Segmenter: scale normalisation, TTA and tiling wiring, checked with a known pointwise predictor."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from nucleiseg.config import InferConfig, ModelBundleConfig
from nucleiseg.bundle import ModelBundle
from nucleiseg.inference.segmenter import Segmenter
from nucleiseg.metrics import match_labels


def pointwise_predictor(batch: np.ndarray) -> np.ndarray:
    """Foreground = image intensity; contour and separation = 0 (an ideal 'network' for disks)."""
    fg = batch.mean(axis=1, keepdims=True)
    zeros = np.zeros_like(fg)
    return np.concatenate([fg, zeros, zeros], axis=1).astype(np.float32)


def disks_image(make_disks, radius: float, spacing: int, n: int = 3) -> tuple[np.ndarray, np.ndarray]:
    size = spacing * (n + 1)
    centers = [(spacing * (i + 1), spacing * (j + 1)) for i in range(n) for j in range(n)]
    labels = make_disks((size, size), centers, radius)
    image = np.where(labels > 0, 200, 10).astype(np.uint8)
    return image, labels


@pytest.fixture
def segmenter() -> Segmenter:
    cfg = ModelBundleConfig()
    cfg.normalize.mode = "minmax"
    return Segmenter(cfg, pointwise_predictor, stride=8, name="pointwise")


def test_large_nuclei_are_rescaled_and_mapped_back(segmenter, make_disks):
    image, truth = disks_image(make_disks, radius=30, spacing=90)
    result = segmenter.segment(image)
    assert result.labels.shape == image.shape
    assert result.diameter == pytest.approx(60, rel=0.1)
    assert result.scale == pytest.approx(18 / result.diameter, rel=1e-6)
    assert result.probabilities.shape[1:] == image.shape
    match = match_labels(truth, result.labels)
    assert result.count == 9 and match.competition_score > 0.9


def test_nuclei_at_training_scale_are_not_rescaled(segmenter, make_disks):
    image, truth = disks_image(make_disks, radius=9, spacing=30)
    result = segmenter.segment(image)
    assert result.scale == 1.0 and result.count == 9
    assert match_labels(truth, result.labels).competition_score > 0.95


def test_given_diameter_skips_the_estimate(segmenter, make_disks):
    image, _ = disks_image(make_disks, radius=30, spacing=90)
    result = segmenter.segment(image, replace(InferConfig(), diameter=36.0))
    assert result.scale == pytest.approx(0.5) and result.diameter == 36.0 and "first_pass" not in result.timings
    off = segmenter.segment(image, replace(InferConfig(), rescale=False))
    assert off.scale == 1.0


def test_tta_and_tiling_do_not_change_an_equivariant_prediction(segmenter, make_disks):
    image, _ = disks_image(make_disks, radius=9, spacing=30, n=6)
    plain = segmenter.segment(image, replace(InferConfig(), rescale=False))
    tiled = segmenter.segment(image, replace(InferConfig(), rescale=False, tile=64, overlap=0.25, tta=True))
    np.testing.assert_allclose(tiled.probabilities, plain.probabilities, atol=1e-5)
    np.testing.assert_array_equal(tiled.labels, plain.labels)


def test_classical_and_unknown_models():
    seg = Segmenter.from_pretrained("classical")
    assert seg.is_classical and seg.describe()["model"] == "classical"
    with pytest.raises(FileNotFoundError, match="bundled models"):
        ModelBundle.open("no-such-model").folder


def test_bad_image_shape(segmenter):
    with pytest.raises(ValueError, match="2D gray or colour"):
        segmenter.segment(np.zeros((2, 3, 4, 5)))


def test_no_seams_in_a_large_mosaic_with_the_default_model():
    """A 2x2 mosaic of a real image, tiled in 256-pixel tiles, gives the labels of one whole pass."""
    from pathlib import Path

    from nucleiseg.io import read_image

    tile = read_image(Path(__file__).resolve().parents[1] / "examples" / "fluo_wide.png")
    mosaic = np.concatenate([np.concatenate([tile, tile], axis=1)] * 2, axis=0)
    seg = Segmenter.from_pretrained("default")
    whole = seg.segment(mosaic, replace(seg.config.infer, rescale=False, tile=2048)).labels
    tiled = seg.segment(mosaic, replace(seg.config.infer, rescale=False, tile=256, overlap=0.25)).labels
    match = match_labels(whole, tiled)
    assert match.n_true > 200
    assert abs(match.n_true - match.n_pred) <= 0.02 * match.n_true
    assert match.ap50 > 0.97 and match.competition_score > 0.9


def test_result_count_is_the_number_of_distinct_nonzero_labels():
    from nucleiseg.inference.segmenter import Result

    labels = np.array([[0, 3, 3], [7, 7, 0], [0, 0, 12]], np.int32)  # ids need not be consecutive
    assert Result(labels, None, None, 1.0).count == 3
    assert Result(np.zeros((4, 4), np.int32), None, None, 1.0).count == 0
    assert Result(np.zeros((0, 0), np.int32), None, None, 1.0).count == 0
    assert Result(np.full((2, 2), 5, np.int32), None, None, 1.0).count == 1
