"""Post-processing: watershed splitting, the classical baseline, diameter estimate and tuning."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage as ndi
from skimage.segmentation import find_boundaries

from nucleiseg.config import PostprocessConfig
from nucleiseg.metrics import competition_score
from nucleiseg.postprocess import (
    classical_segment,
    estimate_diameter,
    labels_from_mask,
    probabilities_to_labels,
    tune_postprocess,
)
from nucleiseg.postprocess.tuning import REFINE
from nucleiseg.postprocess.watershed import drop_unconfident

TWO_CENTERS = [(32.0, 34.0), (32.0, 58.0)]  # radius 14: the disks overlap by 4 pixels


def best_ious(truth: np.ndarray, pred: np.ndarray) -> list[float]:
    """For each true object, the best IoU with any predicted object (by pixel counting)."""
    out = []
    for t in range(1, int(truth.max()) + 1):
        tm = truth == t
        best = 0.0
        for p in np.unique(pred[tm]):
            if p == 0:
                continue
            pm = pred == p
            best = max(best, (tm & pm).sum() / (tm | pm).sum())
        out.append(best)
    return out


def contour_probs(labels: np.ndarray, blur: float = 1.0) -> np.ndarray:
    """Hand-made (3, H, W) [foreground, contour, separation] probabilities of a label image."""
    fg = (labels > 0).astype(np.float32)
    contour = find_boundaries(labels, mode="inner").astype(np.float32)
    sep = np.zeros_like(fg)
    return np.stack([ndi.gaussian_filter(c, blur) if blur else c for c in (fg, contour, sep)])


def test_contour_mode_splits_touching_disks(make_disks):
    truth = make_disks((64, 96), TWO_CENTERS, 14)
    labels = probabilities_to_labels(contour_probs(truth), PostprocessConfig())
    assert labels.dtype == np.int32
    assert labels.max() == 2 and set(np.unique(labels)) == {0, 1, 2}
    assert min(best_ious(truth, labels)) > 0.9


def test_binary_mode_splits_touching_disks_with_distance_markers(make_disks):
    truth = make_disks((64, 96), TWO_CENTERS, 14)
    fg = (truth > 0).astype(np.float32)[None]
    labels = probabilities_to_labels(fg, PostprocessConfig(diameter=28))
    assert labels.max() == 2
    assert min(best_ious(truth, labels)) > 0.9
    # The same through labels_from_mask on the boolean mask.
    assert np.array_equal(labels_from_mask(truth > 0, PostprocessConfig(diameter=28)), labels)


def test_binary_mode_keeps_far_apart_disks_whole(make_disks):
    truth = make_disks((80, 80), [(20, 20), (20, 60), (60, 40)], 9)
    labels = probabilities_to_labels((truth > 0)[None].astype(np.float32), PostprocessConfig(diameter=18))
    assert labels.max() == 3
    assert min(best_ious(truth, labels)) > 0.99


def test_nucleus_without_marker_is_kept(make_disks):
    truth = make_disks((64, 96), [(32, 20), (32, 70)], 10)
    probs = contour_probs(truth, blur=0)
    faint = truth == 2
    probs[0][faint] = 0.6  # foreground, but its core 0.6 * (1 - 0.5) = 0.3 is below marker_threshold
    probs[1][faint] = 0.5
    labels = probabilities_to_labels(probs, PostprocessConfig(marker_threshold=0.5))
    assert labels.max() == 2
    assert min(best_ious(truth, labels)) > 0.99


def test_small_objects_are_removed(make_disks):
    truth = make_disks((40, 40), [(20, 20)], 6)
    fg = (truth > 0).astype(np.float32)
    fg[2:4, 2:4] = 1.0  # 4-pixel speck
    fg[2:5, 30:33] = 1.0  # 9-pixel speck
    cfg = PostprocessConfig(min_size=9, min_marker_size=1)
    for probs in (fg[None], np.stack([fg, np.zeros_like(fg), np.zeros_like(fg)])):
        labels = probabilities_to_labels(probs, cfg)
        assert labels.max() == 2  # the disk and the 9-pixel speck (exactly min_size) stay
        assert labels[3, 3] == 0 and labels[3, 31] > 0


def test_fill_holes(make_disks):
    truth = make_disks((40, 40), [(20, 20)], 10)
    fg = (truth > 0).astype(np.float32)
    fg[19:22, 19:22] = 0.0
    filled = probabilities_to_labels(fg[None], PostprocessConfig(fill_holes=True))
    holed = probabilities_to_labels(fg[None], PostprocessConfig(fill_holes=False))
    assert filled[20, 20] == 1 and holed[20, 20] == 0


def test_otsu_threshold_finds_faint_nuclei(make_disks):
    truth = make_disks((64, 64), [(16, 16), (16, 48), (48, 32)], 8)
    rng = np.random.default_rng(0)
    fg = np.where(truth > 0, 0.35, 0.05) + rng.normal(0, 0.01, truth.shape)
    probs = fg[None].astype(np.float32)
    assert probabilities_to_labels(probs, PostprocessConfig(threshold=0.5)).max() == 0
    labels = probabilities_to_labels(probs, PostprocessConfig(threshold_method="otsu", diameter=16))
    assert labels.max() == 3
    assert min(best_ious(truth, labels)) > 0.95


def test_otsu_on_constant_input_falls_back_to_fixed_threshold():
    cfg = PostprocessConfig(threshold_method="otsu")
    assert probabilities_to_labels(np.full((1, 20, 20), 0.2, np.float32), cfg).max() == 0
    assert probabilities_to_labels(np.full((1, 20, 20), 0.9, np.float32), cfg).max() == 1


def test_empty_and_nan_inputs():
    assert probabilities_to_labels(np.zeros((3, 16, 16), np.float32)).max() == 0
    probs = np.full((1, 16, 16), np.nan, np.float32)
    assert probabilities_to_labels(probs).max() == 0


def test_labels_are_sequential(make_disks):
    truth = make_disks((100, 100), [(15, 15), (15, 80), (50, 50), (85, 20), (85, 85)], 8)
    labels = probabilities_to_labels(contour_probs(truth), PostprocessConfig())
    assert sorted(np.unique(labels)) == list(range(6))


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="probs must have shape"):
        probabilities_to_labels(np.zeros((1, 2, 8, 8)))
    with pytest.raises(ValueError, match="threshold_method"):
        probabilities_to_labels(np.zeros((1, 8, 8)), PostprocessConfig(threshold_method="mean"))
    with pytest.raises(ValueError, match="mask must be 2-D"):
        labels_from_mask(np.zeros((2, 8, 8), bool))
    with pytest.raises(ValueError, match="image must be"):
        classical_segment(np.zeros((8, 8, 5)))


def test_estimate_diameter(make_disks):
    truth = make_disks((100, 100), [(20, 20), (20, 70), (70, 45)], 10)
    assert estimate_diameter(truth) == pytest.approx(20.0, rel=0.05)
    assert estimate_diameter(truth > 0) == pytest.approx(20.0, rel=0.05)
    assert np.isnan(estimate_diameter(np.zeros((5, 5), np.int32)))
    assert estimate_diameter(np.zeros((5, 5), np.int32), default=18.0) == 18.0


def synthetic_fluorescence(make_disks, invert: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Bright disks (two of them touching) on a dark noisy background, 8-bit RGB; or inverted."""
    centers = [(20, 20), (20, 60), (20, 100), (60, 20), (60, 100), (100, 30), (100, 70), (64, 54), (64, 76)]
    truth = make_disks((128, 128), centers, 9)
    rng = np.random.default_rng(1)
    img = np.where(truth > 0, 170.0, 30.0) + rng.normal(0, 12, truth.shape)
    img = ndi.gaussian_filter(img, 0.7)
    if invert:
        img = 255.0 - img
    img = np.clip(img, 0, 255).astype(np.uint8)
    return np.repeat(img[..., None], 3, axis=2), truth


@pytest.mark.parametrize("invert", [False, True])
def test_classical_segment_synthetic(make_disks, invert):
    image, truth = synthetic_fluorescence(make_disks, invert=invert)
    labels = classical_segment(image)
    assert labels.dtype == np.int32
    assert labels.max() == truth.max()
    assert min(best_ious(truth, labels)) > 0.8


def test_classical_segment_gray_and_rgba_agree(make_disks):
    image, _ = synthetic_fluorescence(make_disks)
    rgba = np.concatenate([image, np.full(image.shape[:2] + (1,), 255, np.uint8)], axis=2)
    assert np.array_equal(classical_segment(rgba), classical_segment(image[..., 0]))


def test_classical_segment_blank_image():
    assert classical_segment(np.full((32, 32), 7, np.uint8)).max() == 0


def load_dsb(sample_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Image and merged label image of a Kaggle-layout sample folder."""
    image = np.asarray(Image.open(sample_dir / "images" / f"{sample_dir.name}.png"))
    truth = np.zeros(image.shape[:2], np.int32)
    for k, path in enumerate(sorted((sample_dir / "masks").glob("*.png")), start=1):
        truth[np.asarray(Image.open(path)) > 0] = k
    return image, truth


# A brightfield / stained image (bright background) besides the conftest's fluorescence ones.
BRIGHT_ID = "00ae65c1c6631ae6f2be1a449902976e6eb8483bf6b0740d00530220832c6d3e"


def test_classical_segment_real_dsb(real_sample_dirs, dsb_root):
    for sample_dir in [*real_sample_dirs, dsb_root / BRIGHT_ID]:
        image, truth = load_dsb(sample_dir)
        labels = classical_segment(image)
        n_true, n_pred = int(truth.max()), int(labels.max())
        assert n_true / 2 <= n_pred <= n_true * 2, (sample_dir.name, n_true, n_pred)
        assert competition_score(truth, labels) > 0.15, sample_dir.name


def test_tuning_finds_better_threshold(make_disks):
    rng = np.random.default_rng(3)
    probs_list, gt_list = [], []
    for shift in (0, 6):
        truth = make_disks((96, 96), [(20 + shift, 20), (20, 70), (70 - shift, 30), (70, 72), (45, 45)], 9)
        probs = contour_probs(truth) * 0.5  # an under-confident model: 0.5 is far too high
        probs[0] += rng.uniform(0, 0.05, truth.shape).astype(np.float32)
        probs_list.append(probs)
        gt_list.append(truth)
    base = PostprocessConfig(threshold=0.5, marker_threshold=0.5)
    base_score = np.mean([competition_score(t, probabilities_to_labels(p, base)) for p, t in zip(probs_list, gt_list)])
    best, score, table = tune_postprocess(probs_list, gt_list, base)
    assert base_score < 0.5
    assert best.threshold < 0.4 and best.marker_threshold < 0.4
    assert score > 0.95
    again = np.mean([competition_score(t, probabilities_to_labels(p, best)) for p, t in zip(probs_list, gt_list)])
    assert again == pytest.approx(score)
    # the default grid already holds the base settings; then the confidence filter's line search
    assert len(table) == 60 + len(REFINE["min_confidence"]) - 1
    assert table["score"].is_monotonic_decreasing and table.loc[0, "score"] == score
    assert {"threshold", "marker_threshold", "min_size", "min_confidence", "score", "score_std"} <= set(table.columns)


def test_confidence_filter_drops_faint_objects_only(make_disks):
    truth = make_disks((96, 96), [(20, 20), (20, 70), (70, 30), (70, 72)], 9)
    fake = make_disks((96, 96), [(45, 45)], 7)
    probs = contour_probs(truth)
    probs[0][fake > 0] = 0.7  # a faint false positive (stroma, debris)
    keep_all = probabilities_to_labels(probs, PostprocessConfig(threshold=0.5, marker_threshold=0.5))
    assert keep_all.max() == 5
    cfg = PostprocessConfig(threshold=0.5, marker_threshold=0.5, min_confidence=0.8)
    filtered = probabilities_to_labels(probs, cfg)
    assert filtered.max() == 4 and not filtered[fake > 0].any()
    assert competition_score(truth, filtered) == pytest.approx(1.0)
    np.testing.assert_array_equal(drop_unconfident(keep_all, probs[0], 0.0), keep_all)
    # tuning's line search finds the filter when the faint object costs score
    best, score, _ = tune_postprocess([probs], [truth], PostprocessConfig(threshold=0.5, marker_threshold=0.5))
    assert 0.7 < best.min_confidence and score == pytest.approx(1.0)
    best, _, table = tune_postprocess([probs], [truth], grid={"threshold": [0.5]})
    assert best.min_confidence == 0.0 and len(table) == 1  # an explicit grid searches only itself


def test_tuning_custom_grid_and_validation(make_disks):
    truth = make_disks((48, 48), [(24, 24)], 8)
    probs = ((truth > 0).astype(np.float32) * 0.45)[None]
    base = PostprocessConfig()
    best, score, table = tune_postprocess([probs], [truth], base, grid={"threshold": [0.2, 0.6]})
    assert best.threshold == 0.2 and score == pytest.approx(1.0)
    assert dataclasses.replace(best, threshold=base.threshold) == base
    assert len(table) == 3
    with pytest.raises(ValueError, match="unknown PostprocessConfig"):
        tune_postprocess([probs], [truth], base, grid={"thresh": [0.5]})
    with pytest.raises(ValueError, match="gt_list has"):
        tune_postprocess([probs], [], base)
    with pytest.raises(ValueError, match="do not match"):
        tune_postprocess([probs], [truth[:10]], base)


def _reference_watershed(image: np.ndarray, markers: np.ndarray, mask: np.ndarray) -> np.ndarray:
    from skimage.segmentation import watershed

    return watershed(image, markers, mask=mask)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_watershed_by_component_equals_whole_image_watershed(seed):
    from nucleiseg.postprocess.watershed import watershed_by_component

    rng = np.random.default_rng(seed)
    relief = ndi.gaussian_filter(rng.random((160, 190)), 2)  # continuous: no ties between pixels
    mask = ndi.gaussian_filter(rng.random((160, 190)), 3) > 0.5
    markers, _ = ndi.label((rng.random((160, 190)) > 0.97) & mask)
    got = watershed_by_component(relief, markers, mask)
    np.testing.assert_array_equal(got, _reference_watershed(relief, markers, mask))
    comps, n = ndi.label(mask)
    per_comp = [len(np.unique(markers[(comps == k) & (markers > 0)])) for k in range(1, n + 1)]
    assert max(per_comp) >= 2 and min(per_comp) == 0 and 1 in per_comp  # all three cases occur


def test_watershed_by_component_on_real_predictions(real_sample_dirs):
    """Same labels as the whole-image watershed on the bundled model's real probabilities."""
    from nucleiseg.inference.segmenter import Segmenter
    from nucleiseg.postprocess.watershed import (
        foreground_mask,
        marker_probability,
        remove_small_labels,
        watershed_by_component,
    )

    seg = Segmenter.from_pretrained("default")
    post = seg.config.postprocess
    for sample_dir in real_sample_dirs:
        image, _ = load_dsb(sample_dir)
        probs = seg.segment(image).probabilities
        mask = foreground_mask(probs[0], post)
        core = marker_probability(probs)
        markers, _ = ndi.label((core > post.marker_threshold) & mask)
        markers = remove_small_labels(markers, post.min_marker_size)
        np.testing.assert_array_equal(
            watershed_by_component(-core, markers, mask), _reference_watershed(-core, markers, mask), err_msg=sample_dir.name
        )


@pytest.mark.parametrize("seed", range(4))
def test_fill_holes_equals_scipy(seed):
    from nucleiseg.postprocess.watershed import fill_holes

    rng = np.random.default_rng(seed)
    mask = ndi.gaussian_filter(rng.random((90, 130)), rng.uniform(1, 3)) > rng.uniform(0.45, 0.55)
    rr, cc = np.mgrid[:90, :130]
    mask |= np.abs(np.hypot(rr - 45, cc - 60) - 12) < 2  # a ring: at least one hole
    mask[0, :] |= rng.random(130) > 0.5  # foreground touching the border
    expected = ndi.binary_fill_holes(mask)
    assert (expected != mask).any()  # there are holes to fill
    np.testing.assert_array_equal(fill_holes(mask), expected)
    np.testing.assert_array_equal(fill_holes(np.ones((5, 6), bool)), np.ones((5, 6), bool))
    np.testing.assert_array_equal(fill_holes(np.zeros((5, 6), bool)), np.zeros((5, 6), bool))
