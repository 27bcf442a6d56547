"""Tests of nucleiseg.transforms: normalisation, training targets, augmentation, patches."""

from __future__ import annotations

import dataclasses
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage as ndi
from skimage.segmentation import find_boundaries

from nucleiseg.config import AugmentConfig, NormalizeConfig, TargetConfig
from nucleiseg.transforms import (
    build_augment,
    contour_map,
    gap_weights,
    image_style_features,
    is_bright_background,
    make_targets,
    normalize_image,
    patchify,
    separation_map,
    style_clusters,
)

# ---------------------------------------------------------------- helpers


def _read_sample(sample_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """RGBA image and label image (ids 1..n) of a Kaggle DSB sample folder, read with PIL."""
    image = np.array(Image.open(next((sample_dir / "images").glob("*.png"))))
    masks = sorted((sample_dir / "masks").glob("*.png"))
    labels = np.zeros(image.shape[:2], np.int32)
    for k, path in enumerate(masks, start=1):
        labels[np.array(Image.open(path)) > 0] = k
    return image, labels


def _markers(targets: np.ndarray) -> tuple[np.ndarray, int]:
    """Connected components of fg & ~contour & ~separation."""
    fg, contour, sep = targets > 0.5
    return ndi.label(fg & ~contour & ~sep)


def _no_aug_cfg(**overrides: float | bool) -> AugmentConfig:
    """AugmentConfig with every transform off, then ``overrides`` applied."""
    off = {f.name: 0.0 for f in dataclasses.fields(AugmentConfig) if f.name.endswith("_p")}
    return AugmentConfig(**{**off, "flips": False, "rotate90": False, **overrides})


def _blob_image(bright_background: bool) -> np.ndarray:
    """uint8 gray image with four disks; dark disks on bright background or the reverse."""
    yy, xx = np.mgrid[:80, :80]
    disks = np.zeros((80, 80), bool)
    for cy, cx in [(20, 20), (20, 60), (60, 20), (60, 60)]:
        disks |= (yy - cy) ** 2 + (xx - cx) ** 2 <= 8**2
    bg, fg = (200, 50) if bright_background else (20, 180)
    noise = np.random.default_rng(0).integers(0, 10, (80, 80))
    return np.where(disks, fg, bg).astype(np.uint8) + noise.astype(np.uint8), disks


# ---------------------------------------------------------------- normalize


def test_normalize_uint8_gray_to_three_channels() -> None:
    img = np.tile(np.arange(256, dtype=np.uint8), (8, 1))
    out = normalize_image(img, NormalizeConfig())
    assert out.shape == (8, 256, 3) and out.dtype == np.float32
    assert out.min() == 0.0 and out.max() == 1.0
    assert np.array_equal(out[..., 0], out[..., 2])
    assert np.all(np.diff(out[0, :, 0]) >= 0)  # monotone mapping


def test_normalize_uint16_matches_uint8_and_minmax() -> None:
    img8 = np.random.default_rng(1).integers(0, 256, (32, 40)).astype(np.uint8)
    img16 = img8.astype(np.uint16) * 257
    cfg = NormalizeConfig(mode="minmax", channels=1)
    a, b = normalize_image(img8, cfg), normalize_image(img16, cfg)
    np.testing.assert_allclose(a, b, atol=1e-6)
    np.testing.assert_allclose(a[..., 0], (img8 - img8.min()) / float(img8.max() - img8.min()), atol=1e-6)
    none = normalize_image(img16, NormalizeConfig(mode="none", channels=1))
    np.testing.assert_allclose(none[..., 0], img16 / 65535.0, atol=1e-6)


def test_normalize_rgba_drops_alpha_and_keeps_colour_balance() -> None:
    rng = np.random.default_rng(2)
    g = rng.integers(0, 100, (30, 30))
    rgb = np.stack([2 * g, g, g // 2], axis=2).astype(np.uint8)
    rgba = np.concatenate([rgb, np.full((30, 30, 1), 255, np.uint8)], axis=2)
    cfg = NormalizeConfig(mode="minmax")
    out = normalize_image(rgba, cfg)
    np.testing.assert_array_equal(out, normalize_image(rgb, cfg))
    # joint scaling: red stays the brightest channel, green is not stretched to 1 on its own
    assert np.all(out[..., 0] >= out[..., 1]) and out[..., 1].max() < 0.6
    gray1 = normalize_image(rgba, NormalizeConfig(mode="minmax", channels=1))
    np.testing.assert_allclose(gray1[..., 0], out.mean(axis=2), atol=1e-6)
    gray3 = normalize_image(rgba, NormalizeConfig(mode="minmax", grayscale=True))
    assert np.array_equal(gray3[..., 0], gray3[..., 1]) and gray3.max() == 1.0


def test_normalize_constant_and_float_images() -> None:
    constants = (np.full((16, 16), 7, np.uint8), np.zeros((16, 16, 3), np.float32), np.ones((5, 5), np.float64))
    for img in constants:
        out = normalize_image(img, NormalizeConfig(invert_bright=True))
        assert out.shape == (*img.shape[:2], 3) and np.all(out == 0)
    f = np.random.default_rng(3).normal(100.0, 20.0, (40, 40))
    out = normalize_image(f, NormalizeConfig(low=0.0, high=100.0))
    assert out.min() == 0.0 and out.max() == pytest.approx(1.0)


@pytest.mark.parametrize("bright", [True, False])
def test_bright_background_detection_and_inversion(bright: bool) -> None:
    img, disks = _blob_image(bright)
    assert is_bright_background(img) is bright
    assert is_bright_background(np.stack([img] * 3 + [np.full_like(img, 255)], axis=2)) is bright
    out = normalize_image(img, NormalizeConfig(invert_bright=True))[..., 0]
    assert out[disks].mean() > 0.8 and out[~disks].mean() < 0.2  # nuclei always bright
    plain = normalize_image(img, NormalizeConfig(invert_bright=False))[..., 0]
    assert bool(plain[disks].mean() < plain[~disks].mean()) is bright


def test_normalize_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="shape"):
        normalize_image(np.zeros((4, 4, 2)), NormalizeConfig())
    with pytest.raises(ValueError, match="mode"):
        normalize_image(np.zeros((4, 4)), NormalizeConfig(mode="zscore"))
    with pytest.raises(ValueError, match="NaN"):
        normalize_image(np.full((4, 4), np.nan), NormalizeConfig())
    with pytest.raises(ValueError, match="percentiles"):
        normalize_image(np.zeros((4, 4)), NormalizeConfig(low=50, high=10))


def test_style_features_and_clusters() -> None:
    dark, _ = _blob_image(False)
    bright, _ = _blob_image(True)
    tissue = np.stack([bright, (bright * 0.6).astype(np.uint8), bright], axis=2)
    f_dark, f_tissue = image_style_features(dark), image_style_features(tissue)
    assert f_dark.shape == (4,) and f_dark.dtype == np.float32
    assert f_dark[0] == 0 and f_dark[3] == 0 and f_tissue[0] == 1 and f_tissue[3] == 1
    assert image_style_features(np.stack([dark] * 3, axis=2))[0] == 0  # gray stored as RGB
    feats = np.array([f_dark] * 6 + [f_tissue] * 3 + [image_style_features(bright)] * 2)
    feats += np.random.default_rng(4).normal(0, 0.01, feats.shape).astype(np.float32)
    labels = style_clusters(feats, 3)
    assert np.array_equal(labels, style_clusters(feats, 3))  # deterministic
    assert labels.tolist() == [0] * 6 + [1] * 3 + [2] * 2
    assert style_clusters(feats[:2], 5).max() <= 1  # k reduced to the number of rows
    with pytest.raises(ValueError, match="n_clusters"):
        style_clusters(feats, 0)


# ---------------------------------------------------------------- targets


def test_binary_targets_equal_foreground(make_disks) -> None:
    labels = make_disks((48, 64), [(20, 20), (30, 40)], 9)
    t = make_targets(labels, TargetConfig(mode="binary"))
    assert t.shape == (1, 48, 64) and t.dtype == np.float32
    np.testing.assert_array_equal(t[0], (labels > 0).astype(np.float32))


def test_touching_disks_give_two_markers(make_disks) -> None:
    labels = make_disks((64, 72), [(32, 24), (32, 42)], 10)  # centres 18 apart: disks touch
    assert ndi.label(labels > 0)[1] == 1  # one merged blob in the foreground
    t = make_targets(labels, TargetConfig())
    assert t.shape == (3, 64, 72)
    cc, n = _markers(t)
    assert n == 2
    assert {int(np.unique(labels[cc == k]).item()) for k in (1, 2)} == {1, 2}
    # the shared border is separation on both sides, and part of both contours
    fg, contour, sep = t > 0.5
    border = find_boundaries(labels, mode="inner") & (labels > 0)
    other = ndi.maximum_filter(labels, size=3) != ndi.minimum_filter(np.where(labels, labels, 99), size=3)
    shared = border & other  # nucleus pixels next to the other nucleus
    assert shared.sum() > 0 and np.all(sep[shared]) and np.all(contour[shared])


def test_contour_is_inner_boundary_of_given_width(make_disks) -> None:
    labels = make_disks((64, 64), [(32, 32)], 15)
    for width in (1, 2, 3):
        contour = contour_map(labels, width)
        dist = ndi.distance_transform_edt(labels > 0)
        np.testing.assert_array_equal(contour, (labels > 0) & (dist <= width))
    many = make_disks((80, 80), [(20, 20), (22, 34), (50, 50), (60, 30)], 9)
    np.testing.assert_array_equal(contour_map(many, 1), find_boundaries(many, mode="inner", connectivity=1))


def test_separation_zone_between_close_nuclei(make_disks) -> None:
    labels = make_disks((64, 80), [(32, 22), (32, 46)], 10)  # 4-pixel gap, no contact
    sep = separation_map(labels, 3)
    contour = contour_map(labels, 2)
    interior = (labels > 0) & ~contour
    assert sep.sum() > 0 and not np.any(sep & interior) and not np.any(sep & (labels > 0))
    assert np.all(sep[32, 33:36])  # middle of the gap
    d1 = ndi.distance_transform_edt(labels != 1)
    d2 = ndi.distance_transform_edt(labels != 2)
    assert np.all((d1[sep] <= 3) & (d2[sep] <= 3))
    assert not separation_map(make_disks((64, 64), [(32, 32)], 10), 3).any()  # lone nucleus
    assert not separation_map(labels, 1).any()  # gap wider than 2 * width


def test_targets_ignore_id_values_and_dtype(make_disks) -> None:
    labels = make_disks((50, 60), [(20, 20), (25, 34), (30, 45)], 8)
    ref = make_targets(labels, TargetConfig())
    big = labels.astype(np.int64) * (2**30 + 7)
    np.testing.assert_array_equal(make_targets(big, TargetConfig()), ref)
    np.testing.assert_array_equal(make_targets(labels.astype(np.uint16), TargetConfig()), ref)
    with pytest.raises(ValueError, match="integer"):
        make_targets(labels.astype(np.float32), TargetConfig())
    with pytest.raises(ValueError, match="mode"):
        make_targets(labels, TargetConfig(mode="distance"))


def test_gap_weights(make_disks) -> None:
    labels = make_disks((64, 80), [(32, 22), (32, 46)], 10)
    cfg = TargetConfig(separation_width=3)
    w = gap_weights(labels, cfg, 5.0)
    sep = separation_map(labels, 3)
    assert w.dtype == np.float32 and w.shape == labels.shape
    np.testing.assert_array_equal(w, np.where(sep, 6.0, 1.0))
    np.testing.assert_array_equal(gap_weights(labels, cfg, 0.0), np.ones(labels.shape))
    with pytest.raises(ValueError, match="gap_weight"):
        gap_weights(labels, cfg, -1.0)


def test_targets_fast_on_large_image() -> None:
    rng = np.random.default_rng(5)
    labels = np.zeros((1024 + 24, 1024 + 24), np.int32)
    yy, xx = np.mgrid[-11:12, -11:12]
    disk = yy**2 + xx**2 <= 11**2
    for k, (y, x) in enumerate(rng.integers(0, 1024, (500, 2)), start=1):  # 500 touching/overlapping disks
        labels[y : y + 23, x : x + 23][disk] = k
    labels = labels[12:-12, 12:-12]
    assert len(np.unique(labels)) > 400
    make_targets(labels, TargetConfig())
    start = time.perf_counter()
    make_targets(labels, TargetConfig())
    gap_weights(labels, TargetConfig(), 5.0)
    assert time.perf_counter() - start < 0.3


def test_targets_on_real_sample(real_sample_dirs) -> None:
    _, labels = _read_sample(real_sample_dirs[0])
    t = make_targets(labels, TargetConfig())
    cc, n = _markers(t)
    owners = [np.unique(labels[cc == k]) for k in range(1, n + 1)]
    assert all(len(o) == 1 and o[0] > 0 for o in owners)  # no marker spans two nuclei
    assert len({int(o[0]) for o in owners}) >= 0.9 * labels.max()  # nearly every nucleus has one


# ---------------------------------------------------------------- augment


@pytest.mark.parametrize("shape", [(100, 120), (400, 520)])
def test_augment_shapes_and_exact_labels(make_disks, shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(6)
    centers = [tuple(c) for c in rng.uniform(0, min(shape), (25, 2))]
    labels = make_disks(shape, centers, 9) * 7  # non-consecutive ids
    image = rng.random((*shape, 3)).astype(np.float32)
    aug = build_augment(AugmentConfig(), 128, seed=0)
    ids = set(np.unique(labels).tolist()) | {0}
    for _ in range(6):
        out = aug(image=image, mask=labels)
        assert out["image"].shape == (128, 128, 3) and out["image"].dtype == np.float32
        assert out["mask"].shape == (128, 128) and out["mask"].dtype == np.int32
        assert set(np.unique(out["mask"]).tolist()) <= ids
        assert np.isfinite(out["image"]).all()


def test_augment_deterministic_with_seed() -> None:
    rng = np.random.default_rng(7)
    image = rng.random((150, 150, 3)).astype(np.float32)
    labels = rng.integers(0, 5, (150, 150)).astype(np.int32)
    runs = []
    for seed in (3, 3, 4):
        aug = build_augment(AugmentConfig(), 96, seed=seed)
        runs.append([aug(image=image, mask=labels) for _ in range(3)])
    for a, b in zip(runs[0], runs[1], strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["mask"], b["mask"])
    assert any(not np.array_equal(a["image"], c["image"]) for a, c in zip(runs[0], runs[2], strict=True))


def test_augment_every_transform_on_without_warnings() -> None:
    on = {f.name: 1.0 for f in dataclasses.fields(AugmentConfig) if f.name.endswith("_p")}
    rng = np.random.default_rng(8)
    labels = rng.integers(0, 30, (90, 70)).astype(np.int32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for channels in (3, 1):
            aug = build_augment(AugmentConfig(**on), 64, channels=channels, seed=1)
            image = rng.random((90, 70, channels)).astype(np.float32)
            for _ in range(3):
                out = aug(image=image, mask=labels)
                assert out["image"].shape == (64, 64, channels)
                assert out["image"].min() >= 0.0 and out["image"].max() <= 1.0
                assert set(np.unique(out["mask"]).tolist()) <= set(range(30))


def test_augment_disabled_transforms_only_crop() -> None:
    image = np.arange(80 * 90, dtype=np.float32).reshape(80, 90, 1) / (80 * 90)
    labels = np.arange(80 * 90, dtype=np.int32).reshape(80, 90)
    out = build_augment(_no_aug_cfg(), 32, channels=1, seed=2)(image=image, mask=labels)
    y, x = divmod(int(out["mask"][0, 0]), 90)
    np.testing.assert_array_equal(out["mask"], labels[y : y + 32, x : x + 32])
    np.testing.assert_array_equal(out["image"], image[y : y + 32, x : x + 32])
    inv = build_augment(_no_aug_cfg(invert_p=1.0), 32, channels=1, seed=2)(image=image, mask=labels)
    y, x = divmod(int(inv["mask"][0, 0]), 90)
    np.testing.assert_allclose(inv["image"], 1.0 - image[y : y + 32, x : x + 32], atol=1e-6)


def test_augment_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="crop_size"):
        build_augment(AugmentConfig(), 0)
    with pytest.raises(ValueError, match="elastic_p"):
        build_augment(AugmentConfig(elastic_p=1.5), 64)
    with pytest.raises(ValueError, match="scale_min"):
        build_augment(AugmentConfig(scale_min=2.0, scale_max=1.0), 64)


def test_augment_and_targets_on_real_sample(real_sample_dirs) -> None:
    image, labels = _read_sample(real_sample_dirs[1])
    norm = normalize_image(image, NormalizeConfig())
    aug = build_augment(AugmentConfig(), 128, seed=0)
    ids = set(np.unique(labels).tolist())
    nonempty = 0
    for _ in range(4):
        out = aug(image=norm, mask=labels)
        assert set(np.unique(out["mask"]).tolist()) <= ids
        t = make_targets(out["mask"], TargetConfig())
        assert t.shape == (3, 128, 128)
        assert not np.any(t[1] > t[0])  # contour inside foreground
        nonempty += bool(out["mask"].any())
    assert nonempty >= 3  # crops prefer nuclei


# ---------------------------------------------------------------- patchify


def test_patchify_covers_image() -> None:
    image = np.random.default_rng(9).random((70, 100, 3)).astype(np.float32)
    labels = np.arange(70 * 100, dtype=np.int32).reshape(70, 100)
    patches = patchify(image, labels, 32, 24)
    seen = np.zeros(labels.shape, bool)
    origins = []
    for img, lab in patches:
        assert img.shape == (32, 32, 3) and lab.shape == (32, 32)
        y, x = divmod(int(lab[0, 0]), 100)
        np.testing.assert_array_equal(img, image[y : y + 32, x : x + 32])
        seen[y : y + 32, x : x + 32] = True
        origins.append((y, x))
    assert seen.all()
    assert origins == [(y, x) for y in (0, 24, 38) for x in (0, 24, 48, 68)]  # last one flush with edge
    small = patchify(image[:20, :10], labels[:20, :10], 32, 32)
    assert len(small) == 1 and small[0][0].shape == (32, 32, 3) and small[0][1][20:].max() == 0
    with pytest.raises(ValueError, match="stride"):
        patchify(image, labels, 32, 40)
