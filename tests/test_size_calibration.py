"""The size regression's log offset: chosen out of fold on training samples, applied everywhere."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from nucleiseg.inference.size import STAT_NAMES, ZOOMS, SizeModel, design
from nucleiseg.inference.size_calibration import calibrate_offset, group_folds, share_within


def regression_samples(noise: float, n_images: int = 200, copies: int = 3, seed: int = 0):
    """Zoomed copies of images: log diameters linear in 4 features, plus normal errors of spread ``noise``."""
    rng = np.random.default_rng(seed)
    groups = np.repeat([f"img{i}" for i in range(n_images)], copies)
    x = rng.normal(size=(groups.size, 4))
    y = x @ np.array([0.6, -0.3, 0.2, 0.1]) + math.log(20.0) + noise * rng.standard_normal(groups.size)
    return x, y, groups


def ridge(x: np.ndarray, y: np.ndarray) -> SizeModel:
    return SizeModel.fit(x, y, alpha=1e-3)


def test_share_within_uses_the_relative_band():
    errors = np.log([0.71, 1.29, 0.69, 1.31])
    assert share_within(errors) == pytest.approx(0.5)
    assert share_within(np.log([1.35]), -0.05) == 1.0  # 1.35 * exp(-0.05) = 1.28


def test_folds_keep_the_copies_of_an_image_together():
    groups = np.repeat(["a", "b", "c", "d", "e", "f", "g"], 3)
    folds = group_folds(groups, 3, seed=4)
    for g in np.unique(groups):
        assert len(set(folds[groups == g])) == 1
    assert set(folds) == {0, 1, 2}
    np.testing.assert_array_equal(folds, group_folds(groups, 3, seed=4))  # deterministic


def test_wide_symmetric_errors_move_the_estimate_below_the_band_centre():
    # normal log errors of sd 0.3: the +-30 % band (-0.357 .. +0.262) holds most of them centred on -0.047
    x, y, groups = regression_samples(0.3)
    found = calibrate_offset(x, y, groups, ridge, folds=5, seed=1, repeats=2)
    assert -0.10 <= found["log_offset"] <= -0.02
    assert found["within_30pct_oof_calibrated"] > found["within_30pct_oof"]
    assert abs(found["median_oof_log_error"]) < 0.05 and found["samples"] == y.size


def test_small_errors_need_no_offset():
    x, y, groups = regression_samples(0.02)
    found = calibrate_offset(x, y, groups, ridge, folds=4, seed=0, repeats=1)
    assert found["log_offset"] == 0.0 and found["within_30pct_oof"] == 1.0


def test_offset_shifts_regression_and_gate_and_round_trips(tmp_path):
    n = design(np.zeros((len(ZOOMS), len(STAT_NAMES)))).size
    model = SizeModel([0.0] * n, [1.0] * n, [0.0] * n, math.log(30.0), gate_objects=4, gate_confidence=0.9, gate_band=2.0)
    row = dict.fromkeys(STAT_NAMES, 0.0) | {"present": 1.0, "n_markers": 9, "n_fg": 9, "area_d": 17.0, "confidence": 0.95}
    zoom1 = np.array(list(row.values()))
    x = np.zeros(n)
    assert math.exp(float(model.predict_log(x))) == pytest.approx(30.0) and model.gate_diameter(zoom1) == pytest.approx(17.0)
    model.log_offset = -0.05
    assert math.exp(float(model.predict_log(x))) == pytest.approx(30.0 * math.exp(-0.05))
    assert model.gate_diameter(zoom1) == pytest.approx(17.0 * math.exp(-0.05))
    model.save(tmp_path / "size_model.json")
    assert SizeModel.load(tmp_path / "size_model.json").log_offset == -0.05
    old = json.loads((tmp_path / "size_model.json").read_text())
    del old["log_offset"]  # files written before the calibration
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert SizeModel.load(tmp_path / "old.json").log_offset == 0.0
