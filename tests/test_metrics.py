"""Tests of nucleiseg.metrics: DSB matching score, aggregation, pixel metrics and reports."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from nucleiseg.metrics import (
    DEFAULT_THRESHOLDS,
    aggregate,
    aggregate_per_threshold,
    competition_score,
    evaluate_pairs,
    iou_matrix,
    match_labels,
    pixel_metrics,
)


def _rect(shape: tuple[int, int], boxes: list[tuple[int, int, int, int]], ids: list[int] | None = None) -> np.ndarray:
    """Label image with one rectangle ``(r0, r1, c0, c1)`` per object."""
    labels = np.zeros(shape, np.int32)
    for k, (r0, r1, c0, c1) in enumerate(boxes):
        labels[r0:r1, c0:c1] = ids[k] if ids else k + 1
    return labels


def _brute_iou(true: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Reference IoU matrix by looping over every object pair."""
    t_ids = [i for i in np.unique(true) if i]
    p_ids = [i for i in np.unique(pred) if i]
    out = np.zeros((len(t_ids), len(p_ids)))
    for a, i in enumerate(t_ids):
        for b, j in enumerate(p_ids):
            inter = np.count_nonzero((true == i) & (pred == j))
            out[a, b] = inter / np.count_nonzero((true == i) | (pred == j))
    return out


def test_default_thresholds() -> None:
    assert DEFAULT_THRESHOLDS.shape == (10,)
    assert DEFAULT_THRESHOLDS[0] == 0.5 and DEFAULT_THRESHOLDS[2] == 0.6 and DEFAULT_THRESHOLDS[-1] == 0.95


def test_shifted_disks_match_pixel_counted_iou(make_disks) -> None:
    centers = [(20, 20), (20, 60), (60, 20), (60, 60), (100, 40), (100, 90)]
    shifts = [0, 1, 2, 3, 5, 8]
    true = make_disks((128, 128), centers, 10)
    pred = make_disks((128, 128), [(cy, cx + s) for (cy, cx), s in zip(centers, shifts, strict=True)], 10)
    ious = np.array(
        [
            np.count_nonzero((true == k) & (pred == k)) / np.count_nonzero((true == k) | (pred == k))
            for k in range(1, 7)
        ]
    )
    assert ious[0] == 1.0 and ious[-1] < 0.5  # the shifts span the thresholds
    np.testing.assert_allclose(np.diag(iou_matrix(true, pred)), ious)
    m = match_labels(true, pred)
    for i, t in enumerate(DEFAULT_THRESHOLDS):
        expected_tp = int(np.sum(ious > t))
        assert (m.tp[i], m.fp[i], m.fn[i]) == (expected_tp, 6 - expected_tp, 6 - expected_tp)
    assert m.competition_score == pytest.approx(np.mean([np.sum(ious > t) / (12 - np.sum(ious > t)) for t in DEFAULT_THRESHOLDS]))
    assert m.mean_matched_iou == pytest.approx(ious[ious > 0.5].mean())


def test_iou_matrix_matches_brute_force(make_disks) -> None:
    rng = np.random.default_rng(0)
    true = make_disks((64, 64), [tuple(c) for c in rng.uniform(5, 59, (8, 2))], 7)
    pred = make_disks((64, 64), [tuple(c) for c in rng.uniform(5, 59, (9, 2))], 8)
    np.testing.assert_allclose(iou_matrix(true, pred), _brute_iou(true, pred))


def test_identity_scores_one(make_disks) -> None:
    labels = make_disks((64, 64), [(15, 15), (15, 45), (45, 30)], 9)
    m = match_labels(labels, labels)
    assert m.competition_score == 1.0 and m.ap50 == 1.0 and m.f1_50 == 1.0
    assert m.panoptic_quality == 1.0 and m.mean_matched_iou == 1.0
    assert np.all(m.tp == 3) and np.all(m.fp == 0) and np.all(m.fn == 0)
    assert competition_score(labels, labels) == 1.0


def test_empty_image_conventions() -> None:
    empty = np.zeros((16, 16), np.int32)
    obj = _rect((16, 16), [(2, 8, 2, 8)])
    both = match_labels(empty, empty)
    assert both.competition_score == 1.0 and both.ap50 == 1.0 and both.panoptic_quality == 1.0
    assert np.all(both.precision == 1.0) and np.all(both.recall == 1.0)
    only_pred = match_labels(empty, obj)
    assert only_pred.competition_score == 0.0 and np.all(only_pred.fp == 1) and np.all(only_pred.fn == 0)
    assert only_pred.panoptic_quality == 0.0 and only_pred.mean_matched_iou == 0.0
    only_true = match_labels(obj, empty)
    assert only_true.competition_score == 0.0 and np.all(only_true.fn == 1) and np.all(only_true.fp == 0)
    assert np.all(only_true.precision == 0.0) and np.all(only_true.recall == 0.0)


@pytest.mark.parametrize(
    ("dtype", "ids"),
    [
        (np.int32, [5, 900, 70000]),
        (np.uint16, [5, 900, 60000]),
        (np.uint32, [5, 900, 3_000_000_000]),
        (np.int64, [5, 900, 2**40]),
    ],
)
def test_non_consecutive_ids_and_dtypes(dtype, ids) -> None:
    boxes_t = [(0, 10, 0, 10), (0, 10, 20, 30), (20, 30, 0, 10)]
    boxes_p = [(0, 10, 1, 11), (0, 10, 23, 33), (20, 30, 0, 10)]
    ref = match_labels(_rect((32, 40), boxes_t), _rect((32, 40), boxes_p))
    true = _rect((32, 40), boxes_t).astype(dtype)
    true[true > 0] = np.asarray(ids, dtype)[true[true > 0] - 1]
    pred = _rect((32, 40), boxes_p).astype(dtype)
    pred[pred > 0] = np.asarray(ids[::-1], dtype)[pred[pred > 0] - 1]
    m = match_labels(true, pred)
    np.testing.assert_array_equal(m.tp, ref.tp)
    np.testing.assert_array_equal(m.fp, ref.fp)
    assert m.competition_score == ref.competition_score
    assert m.true_ids.tolist() == sorted(ids)
    # Box 0 (IoU 9/11) and box 2 (IoU 1) match at 0.5; box 1 (IoU 7/13) too. Ids map back.
    assert {tuple(p) for p in m.matched_pairs.tolist()} == {(ids[0], ids[2]), (ids[1], ids[1]), (ids[2], ids[0])}


def test_strict_vs_non_strict_at_exact_thresholds() -> None:
    # 10xL boxes shifted by s have IoU (L - s) / (L + s): exactly 0.5, 0.6 and 0.8 here.
    for length, shift, t_index in [(30, 10, 0), (40, 10, 2), (45, 5, 6)]:
        true = _rect((10, 60), [(0, 10, 0, length)])
        pred = _rect((10, 60), [(0, 10, shift, shift + length)])
        t = DEFAULT_THRESHOLDS[t_index]
        assert iou_matrix(true, pred)[0, 0] == t
        strict = match_labels(true, pred, strict=True)
        loose = match_labels(true, pred, strict=False)
        assert strict.tp[t_index] == 0 and strict.fp[t_index] == 1 and strict.fn[t_index] == 1
        assert loose.tp[t_index] == 1 and loose.fp[t_index] == 0 and loose.fn[t_index] == 0
        assert np.all(strict.tp[:t_index] == 1) and np.all(loose.tp[t_index + 1 :] == 0)


def test_non_strict_halves_stay_one_to_one() -> None:
    # Both halves of a 10x20 box have IoU exactly 0.5; '>=' may match only one of them.
    true = _rect((10, 20), [(0, 10, 0, 20)])
    pred = _rect((10, 20), [(0, 10, 0, 10), (0, 10, 10, 20)])
    loose = match_labels(true, pred, thresholds=[0.5], strict=False)
    assert (loose.tp[0], loose.fp[0], loose.fn[0]) == (1, 1, 0)
    strict = match_labels(true, pred, thresholds=[0.5], strict=True)
    assert (strict.tp[0], strict.fp[0], strict.fn[0]) == (0, 2, 1)


def test_low_threshold_is_one_to_one() -> None:
    true = _rect((10, 20), [(0, 10, 0, 20)])
    pred = _rect((10, 20), [(0, 10, 0, 6), (0, 10, 6, 20)])  # IoU 0.3 and 0.7
    m = match_labels(true, pred, thresholds=[0.1, 0.25])
    assert m.tp.tolist() == [1, 1] and m.fp.tolist() == [1, 1] and m.fn.tolist() == [0, 0]
    assert m.matched_iou.tolist() == [0.7]


def test_split_nucleus_hand_computed() -> None:
    # One 10x20 true nucleus predicted as two pieces: IoU 140/200 = 0.7 and 60/200 = 0.3.
    true = _rect((10, 20), [(0, 10, 0, 20)])
    pred = _rect((10, 20), [(0, 10, 0, 14), (0, 10, 14, 20)])
    m = match_labels(true, pred)
    assert m.tp.tolist() == [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]  # 0.7 > 0.7 is false
    assert m.fp.tolist() == [1, 1, 1, 1, 2, 2, 2, 2, 2, 2]
    assert m.fn.tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 1, 1]
    assert m.competition_score == pytest.approx(0.2)  # 4 thresholds at 1/2, six at 0
    assert m.ap50 == pytest.approx(0.5)
    assert m.f1_50 == pytest.approx(2 / 3)
    assert m.precision50 == pytest.approx(0.5) and m.recall50 == 1.0
    assert m.panoptic_quality == pytest.approx(0.7 / 1.5)
    assert m.mean_matched_iou == pytest.approx(0.7)


def test_micro_vs_macro_hand_computed() -> None:
    good = _rect((20, 20), [(2, 8, 2, 8)])
    many = _rect((20, 20), [(0, 4, 0, 4), (6, 10, 6, 10), (12, 16, 12, 16)])
    empty = np.zeros((20, 20), np.int32)
    matches = [match_labels(good, good), match_labels(many, empty)]
    assert aggregate(matches, "macro") == pytest.approx(0.5)  # (1 + 0) / 2
    assert aggregate(matches, "micro") == pytest.approx(0.25)  # 1 / (1 + 0 + 3)
    np.testing.assert_allclose(aggregate_per_threshold(matches, "micro"), 0.25)
    report = evaluate_pairs([("good", good, good), ("missed", many, empty)])
    assert report.summary["score_macro"] == pytest.approx(0.5)
    assert report.summary["score_micro"] == pytest.approx(0.25)
    with pytest.raises(ValueError, match="mode"):
        aggregate(matches, "weighted")


def test_pixel_metrics_known_case() -> None:
    true = _rect((20, 20), [(0, 10, 0, 10)])
    pred = _rect((20, 20), [(0, 10, 5, 15)])  # inter 50, union 150
    pm = pixel_metrics(true, pred)
    assert pm["foreground_iou"] == pytest.approx(1 / 3)
    assert pm["dice"] == pytest.approx(0.5)
    assert pm["mean_iou_seed"] == pytest.approx((1 / 3 + 250 / 350) / 2)
    assert pm["pixel_accuracy"] == pytest.approx(300 / 400)
    empty = np.zeros((20, 20), np.uint16)
    assert pixel_metrics(empty, empty) == {"foreground_iou": 1.0, "dice": 1.0, "mean_iou_seed": 1.0, "pixel_accuracy": 1.0}
    assert pixel_metrics(true, empty)["foreground_iou"] == 0.0 and pixel_metrics(true, empty)["dice"] == 0.0


def test_invalid_inputs() -> None:
    a = np.zeros((8, 8), np.int32)
    with pytest.raises(ValueError, match="shape mismatch"):
        match_labels(a, np.zeros((8, 9), np.int32))
    with pytest.raises(ValueError, match="integer dtype"):
        match_labels(a, a.astype(float))
    with pytest.raises(ValueError, match=">= 0"):
        match_labels(a - 1, a)
    with pytest.raises(ValueError, match="thresholds"):
        match_labels(a, a, thresholds=[1.5])


def test_report_outputs_and_errors(tmp_path: Path, make_disks) -> None:
    labels = make_disks((48, 48), [(12, 12), (30, 30)], 6)
    shifted = np.roll(labels, 3, axis=1)
    report = evaluate_pairs([("same", labels, labels), ("shifted", labels, shifted)])
    df = report.per_image
    for col in ["id", "n_true", "n_pred", "score", "ap50", "f1_50", "pq", "tp50", "fp50", "fn50",
                "foreground_iou", "dice", "mean_iou_seed", "score@0.50", "score@0.95"]:
        assert col in df.columns
    assert df["score"].tolist()[0] == 1.0 and df["score"].tolist()[1] < 1.0
    assert report.summary["n_images"] == 2
    report.to_json(tmp_path / "r.json")
    loaded = json.loads((tmp_path / "r.json").read_text())
    assert loaded["summary"]["score_macro"] == pytest.approx(report.summary["score_macro"])
    assert [r["id"] for r in loaded["per_image"]] == ["same", "shifted"]
    report.to_csv(tmp_path / "r.csv")
    pd.testing.assert_series_equal(pd.read_csv(tmp_path / "r.csv")["score"], df["score"], rtol=1e-5)
    text = report.format_table(max_rows=1)
    assert "shifted" in text and "same" not in text and "1 more image" in text
    with pytest.raises(ValueError, match="odd-one"):
        evaluate_pairs([("odd-one", labels, labels[:40])])
    with pytest.raises(ValueError, match="duplicate"):
        evaluate_pairs([("a", labels, labels), ("a", labels, labels)])
    with pytest.raises(ValueError, match="no image pairs"):
        evaluate_pairs([])


def _read_dsb_labels(sample_dir: Path) -> np.ndarray:
    """Label image from DSB per-nucleus masks; overlapping pixels keep the first mask's id."""
    masks = sorted((sample_dir / "masks").glob("*.png"))
    labels = None
    for k, path in enumerate(masks, start=1):
        m = np.asarray(Image.open(path)) > 0
        if labels is None:
            labels = np.zeros(m.shape[:2], np.int32)
        labels[m & (labels == 0)] = k
    assert labels is not None
    return labels


def test_real_dsb_sample(real_sample_dirs: list[Path]) -> None:
    labels = _read_dsb_labels(real_sample_dirs[0])
    n = len(np.unique(labels)) - 1
    assert n > 5
    assert competition_score(labels, labels) == 1.0
    removed = labels.copy()
    removed[removed == 3] = 0
    m = match_labels(labels, removed)
    assert np.all(m.tp == n - 1) and np.all(m.fp == 0) and np.all(m.fn == 1)
    assert m.competition_score == pytest.approx((n - 1) / n)
    report = evaluate_pairs([(real_sample_dirs[0].name, labels, labels), ("removed", labels, removed)])
    assert report.summary["fn50"] == 1 and report.summary["score_macro"] == pytest.approx((1 + (n - 1) / n) / 2)


def test_sparse_paths_agree_with_dense(monkeypatch: pytest.MonkeyPatch, make_disks) -> None:
    from nucleiseg.metrics import matching

    true = make_disks((40, 40), [(10, 10), (10, 30), (30, 20)], 8)
    true[true == 0] = 9  # no background at all
    pred = np.roll(true, 2, axis=0) * 3
    dense = match_labels(true, pred)
    dense_iou = iou_matrix(true, pred)
    monkeypatch.setattr(matching, "_DENSE_SLACK", -(10**9))  # force the np.unique branches
    sparse = match_labels(true, pred)
    np.testing.assert_array_equal(sparse.tp, dense.tp)
    np.testing.assert_array_equal(sparse.matched_pairs, dense.matched_pairs)
    np.testing.assert_allclose(iou_matrix(true, pred), dense_iou)
    assert sparse.true_ids.tolist() == [1, 2, 3, 9]


label_images = arrays(np.int32, (10, 12), elements=st.integers(0, 5))


@st.composite
def label_pairs(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    """A random label image and a partly corrupted copy (so that real matches occur)."""
    true = draw(label_images)
    if draw(st.booleans()):
        return true, draw(label_images)
    noise = draw(label_images)
    flip = draw(arrays(bool, true.shape, elements=st.booleans()))
    return true, np.where(flip & (noise % 2 == 0), noise, true)


@settings(max_examples=80, deadline=None)
@given(pair=label_pairs(), strict=st.booleans())
def test_property_symmetry_and_bounds(pair: tuple[np.ndarray, np.ndarray], strict: bool) -> None:
    true, pred = pair
    ab = match_labels(true, pred, strict=strict)
    ba = match_labels(pred, true, strict=strict)
    np.testing.assert_array_equal(ab.tp, ba.tp)
    np.testing.assert_array_equal(ab.fp, ba.fn)
    np.testing.assert_array_equal(ab.fn, ba.fp)
    np.testing.assert_allclose(ab.score, ba.score)
    for value in (ab.score, ab.f1, ab.precision, ab.recall, ab.panoptic_quality, ab.mean_matched_iou):
        assert np.all((np.asarray(value) >= 0) & (np.asarray(value) <= 1))
    assert np.all(ab.tp <= min(ab.n_true, ab.n_pred))
    # Counts agree with a brute-force IoU matrix (one-to-one for t >= 0.5).
    brute = _brute_iou(true, pred)
    for i, t in enumerate(DEFAULT_THRESHOLDS):
        hit = brute > t if strict else brute >= t
        if hit.sum(axis=0).max(initial=0) <= 1 and hit.sum(axis=1).max(initial=0) <= 1:
            assert ab.tp[i] == hit.sum()


@pytest.mark.parametrize("big_ids", [False, True])
def test_overlaps_counted_in_chunks_are_those_of_one_pass(monkeypatch, big_ids):
    """Pairs and areas summed over pixel chunks (and chunk boundaries inside objects) equal one pass."""
    from nucleiseg import counting
    from nucleiseg.metrics import matching

    rng = np.random.default_rng(3)
    true = np.kron(rng.integers(0, 40, (13, 17)), np.ones((9, 7), np.int64))
    pred = np.roll(true, (4, 3), axis=(0, 1))
    pred[pred % 5 == 0] = 0
    if big_ids:  # ids too large for a lookup table
        true = true * 10**12
    whole = matching.overlaps(true, pred)
    monkeypatch.setattr(counting, "CHUNK", 50)
    chunked = matching.overlaps(true, pred)
    for field in ("true_ids", "pred_ids", "true_area", "pred_area", "pair_true", "pair_pred", "intersection", "iou"):
        np.testing.assert_array_equal(getattr(chunked, field), getattr(whole, field))
    assert whole.pair_true.size > 30


def test_overlaps_take_no_whole_image_copies(traced_peak):
    """Matching a 16 Mpx pair of int32 label images: before, ~24 bytes per pixel (intp copies of
    both images, their renumbered copies and the pair index); now the temporaries are per chunk
    (about 50 MB whatever the image's size)."""
    side = 4096
    yy, xx = np.mgrid[:side, :side]
    true = ((yy // 16) * (side // 16) + xx // 16 + 1).astype(np.int32)
    true[(yy % 16 < 3) | (xx % 16 < 3)] = 0
    true[true % 7 == 0] = 0  # ids not consecutive
    pred = np.roll(true, 2, axis=1)
    del yy, xx
    match, peak = traced_peak(lambda: match_labels(true, pred))
    assert match.n_true == match.n_pred > 10_000
    assert peak / true.size < 4, f"{peak / true.size:.1f} bytes per pixel"


def test_pixel_metrics_counted_in_chunks_are_those_of_one_pass(monkeypatch):
    from nucleiseg import counting

    rng = np.random.default_rng(5)
    true = rng.integers(0, 3, (61, 47)).astype(np.uint16)
    pred = rng.integers(0, 2, (61, 47)).astype(bool)
    whole = pixel_metrics(true, pred)
    monkeypatch.setattr(counting, "CHUNK", 100)
    assert pixel_metrics(true, pred) == whole
    assert pixel_metrics(true[:, ::2], pred[:, ::2]) == pixel_metrics(np.ascontiguousarray(true[:, ::2]), np.ascontiguousarray(pred[:, ::2]))
