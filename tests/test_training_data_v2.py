"""The training data and recipe features: extra label-image folders (with the BBBC039 held-out images
never loaded), per-style-cluster balanced sampling of the combined set, the new augmentations
(stain jitter, JPEG, down-sampling, scale jitter) and the default_v2 recipes."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml

import nucleiseg.training.data as data_mod
from nucleiseg.config import AugmentConfig, ExtraDataConfig, NormalizeConfig, TargetConfig, TrainConfig, from_dict
from nucleiseg.config import load_json, save_json
from nucleiseg.io.splits import bbbc039_heldout, bbbc039_training
from nucleiseg.training.data import (
    CropDataset,
    TrainingSample,
    excluded_names,
    load_extra_samples,
)
from nucleiseg.training.sampling import sampling_weights
from nucleiseg.transforms import build_augment
from nucleiseg.transforms.augment import HEDJitter

REPO = Path(__file__).resolve().parents[1]
BBBC039 = REPO.parent / "shared" / "data" / "external" / "bbbc039"
NEW_P = ("hed_p", "jpeg_p", "downscale_p")


# ---------------------------------------------------------------- helpers


@pytest.fixture
def read_spy(monkeypatch):
    """Record every image and ground-truth path the extra-data loader reads."""
    seen: list[Path] = []
    real_read, real_gt = data_mod.read_image, data_mod.load_item_gt

    def read_image(path, *args, **kwargs):
        seen.append(Path(path))
        return real_read(path, *args, **kwargs)

    def load_item_gt(item):
        seen.append(Path(item.gt_path))
        return real_gt(item)

    monkeypatch.setattr(data_mod, "read_image", read_image)
    monkeypatch.setattr(data_mod, "load_item_gt", load_item_gt)
    return seen


def _label_folder(root: Path, names: list[str]) -> Path:
    """``images/`` + ``masks/`` folder of small uint16 images with two nuclei each."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    yy, xx = np.mgrid[:48, :40]
    for k, name in enumerate(names):
        labels = np.zeros((48, 40), np.uint16)
        labels[(yy - 12) ** 2 + (xx - 12) ** 2 <= 36] = 1
        labels[(yy - 34) ** 2 + (xx - 26) ** 2 <= 49] = 2
        image = (500 + 3000 * (labels > 0) + 37 * k).astype(np.uint16)
        tifffile.imwrite(root / "images" / f"{name}.tif", image)
        tifffile.imwrite(root / "masks" / f"{name}.tif", labels)
    return root


def _synthetic_samples() -> list[TrainingSample]:
    """Ten small samples: fluorescence, bright-background and colour ones (as in the golden run)."""
    rng = np.random.default_rng(1234)
    out = []
    for k in range(10):
        h, w = 120 + 10 * k, 150 - 5 * k
        yy, xx = np.mgrid[:h, :w]
        labels = np.zeros((h, w), np.int32)
        for n in range(1, 9):
            cy, cx, r = rng.uniform(10, h - 10), rng.uniform(10, w - 10), rng.uniform(4, 9)
            labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = n
        base = 0.1 + 0.6 * (labels > 0) + 0.05 * rng.random((h, w))
        if k % 3 == 1:
            base = 1.0 - base
        image = np.repeat(base[:, :, None], 3, axis=2)
        if k % 3 == 2:
            image = image * np.array([0.9, 0.5, 0.8])
        out.append(TrainingSample(f"s{k}", np.clip(image, 0, 1).astype(np.float16), labels))
    return out


def _only(**on: float) -> AugmentConfig:
    """AugmentConfig with every transform off except ``on``."""
    off = {f.name: 0.0 for f in dataclasses.fields(AugmentConfig) if f.name.endswith("_p")}
    return AugmentConfig(**{**off, "flips": False, "rotate90": False, **on})


def _tissue_like(shape: tuple[int, int] = (96, 96)) -> tuple[np.ndarray, np.ndarray]:
    """Purple nuclei on a pinkish-white background (float32 0..1) and their labels."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, np.int32)
    for k, (cy, cx) in enumerate([(20, 20), (30, 70), (70, 40), (75, 80)], start=1):
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= 100] = k
    image = np.empty((*shape, 3), np.float32)
    image[:] = (0.93, 0.85, 0.9)
    image[labels > 0] = (0.45, 0.25, 0.6)
    image += np.random.default_rng(0).normal(0, 0.02, image.shape).astype(np.float32)
    return np.clip(image, 0, 1), labels


# ---------------------------------------------------------------- held-out images


def test_bbbc039_heldout_never_loaded(read_spy):
    """The 40 held-out BBBC039 images are dropped before anything is read, whatever the recipe."""
    held = set(bbbc039_heldout())
    assert len(held) == 40
    for exclude in ([], ["bbbc039_heldout"]):  # the committed list applies even when not named
        read_spy.clear()
        samples, record = load_extra_samples(
            ExtraDataConfig(path=str(BBBC039), exclude=exclude, limit_images=2), NormalizeConfig(), progress=False
        )
        assert set(record["excluded"]) == held
        assert not {p.stem for p in read_spy} & held and len(read_spy) == 4  # 2 images + 2 label images
        assert record["used"] == [s.id for s in samples] and all(s.id.startswith("bbbc039/") for s in samples)
        stems = [s.id.split("/", 1)[1] for s in samples]
        assert bbbc039_training(stems) == stems


def test_every_heldout_image_excluded_from_a_full_folder(tmp_path, read_spy):
    held = bbbc039_heldout()
    root = _label_folder(tmp_path / "bbbc039", held[:5] + ["keep_a", "keep_b"])
    samples, record = load_extra_samples(ExtraDataConfig(path=str(root)), NormalizeConfig(), progress=False)
    assert sorted(record["excluded"]) == sorted(held[:5])
    assert record["used"] == ["bbbc039/keep_a", "bbbc039/keep_b"]
    assert {p.stem for p in read_spy} == {"keep_a", "keep_b"}
    # an exclude file drops more images; an unknown list name is an error
    (tmp_path / "more.txt").write_text("# comment\nkeep_a\n")
    _, record = load_extra_samples(ExtraDataConfig(path=str(root), exclude=[str(tmp_path / "more.txt")], name="x"),
                                   NormalizeConfig(), progress=False)
    assert record["used"] == ["x/keep_b"]
    with pytest.raises(ValueError, match="neither a held-out list"):
        excluded_names(["no_such_list"])


def test_measuring_only_data_is_refused(tmp_path, read_spy):
    root = _label_folder(tmp_path / "external" / "monuseg_test", ["a", "b"])
    with pytest.raises(ValueError, match="measuring only"):
        load_extra_samples(ExtraDataConfig(path=str(root)), NormalizeConfig(), progress=False)
    assert read_spy == []


# ---------------------------------------------------------------- combined data set


def test_bbbc039_training_images_load_like_dsb(read_spy):
    samples, record = load_extra_samples(
        ExtraDataConfig(path=str(BBBC039), limit_images=2), NormalizeConfig(), progress=False
    )
    assert record["name"] == "bbbc039" and len(samples) == 2 and record["no_labels"] == []
    for s in samples:
        assert s.image.dtype == np.float16 and s.image.shape == (*s.labels.shape, 3)
        assert s.labels.dtype == np.int32 and s.labels.max() > 10  # many nuclei per image
        assert 0.0 <= float(s.image.min()) and float(s.image.max()) <= 1.0


def test_sampling_stays_balanced_per_style_cluster():
    """Forty extra fluorescence images do not reduce the share of the rare kinds."""
    base = _synthetic_samples()
    rng = np.random.default_rng(5)
    extra = []
    for k in range(40):
        img = np.repeat((0.1 + 0.6 * (rng.random((60, 60)) > 0.8))[:, :, None], 3, axis=2)
        extra.append(TrainingSample(f"extra/{k}", img.astype(np.float16), np.zeros((60, 60), np.int32)))

    def rare_share(samples: list[TrainingSample]) -> float:
        w = sampling_weights(samples)
        return float(sum(w[i] for i, s in enumerate(samples) if s.id in {"s1", "s2", "s4", "s5", "s7", "s8"}))

    before, after = rare_share(base), rare_share(base + extra)
    assert after == pytest.approx(before, abs=0.02) and after > 0.4
    ds = CropDataset(base + extra, 32, TargetConfig(), _only(), length=4)
    assert np.allclose([ds.weights[ds.clusters == k].sum() for k in np.unique(ds.clusters)], 1 / len(np.unique(ds.clusters)))


# ---------------------------------------------------------------- old recipes reproduce


#: Library versions the exact crop digests below were taken with (those of requirements/ci.txt).
#: Another version of these may legitimately draw other pixels: the digests are then not compared,
#: and the version-robust statistics below still are.
DIGEST_VERSIONS = {"albumentations": "2.0.8", "albucore": "0.0.24", "opencv-python-headless": "5.1.0.95"}
#: (digest, image mean, image std, mean of each target channel) of 6 crops, default and old-style.
CROP_REFERENCE = {
    "default": ("addcb5ac1c23cdfca06dfa6661f307afe87a42b0", 0.5002, 0.3890, (0.1057, 0.0446, 0.0100)),
    "old": ("feac4d356bb68c019726c909dc987680a46a5390", 0.5117, 0.3822, (0.1058, 0.0417, 0.0096)),
}


def _pinned_versions() -> bool:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return all(version(name).split("+")[0] == v for name, v in DIGEST_VERSIONS.items())
    except PackageNotFoundError:
        return False


def test_old_recipe_crops_unchanged():
    """Default and old-style augmentation keep drawing the crops they drew before the new augmentations.

    With the pinned library versions the crops must match to the bit; with other versions (a fresh
    resolution) their statistics must stay within a tolerance that a changed recipe would exceed.
    """
    def crops(cfg: AugmentConfig) -> tuple[str, float, float, tuple[float, ...]]:
        ds = CropDataset(_synthetic_samples(), 64, TargetConfig(), cfg, length=6, gap_weight=5.0, seed=3)
        ds.set_epoch(2)
        h = hashlib.sha1()
        images, targets = [], []
        for i in range(6):
            items = ds[i]
            for t in items:
                h.update(t.numpy().tobytes())
            images.append(items[0].numpy())
            targets.append(items[1].numpy())
        h.update(ds.weights.tobytes())
        im, tg = np.stack(images), np.stack(targets)
        return h.hexdigest(), float(im.mean()), float(im.std()), tuple(float(tg[:, k].mean()) for k in range(tg.shape[1]))

    old = AugmentConfig(affine_p=1.0, elastic_p=0.5, blur_p=0.5, noise_p=0.5, invert_p=0.5, hue_p=0.5)
    for key, cfg in (("default", AugmentConfig()), ("old", old)):
        digest, mean, std, channels = crops(cfg)
        ref_digest, ref_mean, ref_std, ref_channels = CROP_REFERENCE[key]
        if _pinned_versions():
            assert digest == ref_digest, key
        assert mean == pytest.approx(ref_mean, abs=0.004), key
        assert std == pytest.approx(ref_std, abs=0.004), key
        assert channels == pytest.approx(ref_channels, abs=0.0015), key
    names = [type(t).__name__ for t in build_augment(AugmentConfig(), 64).transforms]
    assert not {"HEDJitter", "ImageCompression", "Downscale"} & set(names)
    assert all(getattr(AugmentConfig(), p) == 0.0 for p in NEW_P)


# ---------------------------------------------------------------- new augmentations


def _pair(cfg_on: AugmentConfig, image: np.ndarray, labels: np.ndarray, seed: int = 4) -> tuple[dict, dict]:
    """The same crop with and without the transforms of ``cfg_on``."""
    crop = image.shape[0] - 16
    plain = build_augment(_only(), crop, channels=image.shape[2], seed=seed)(image=image, mask=labels)
    out = build_augment(cfg_on, crop, channels=image.shape[2], seed=seed)(image=image, mask=labels)
    return plain, out


@pytest.mark.parametrize("op", NEW_P)
def test_image_only_augmentations_keep_labels_shape_dtype_range(op):
    image, labels = _tissue_like()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plain, out = _pair(_only(**{op: 1.0}), image, labels)
    np.testing.assert_array_equal(out["mask"], plain["mask"])
    assert out["image"].shape == plain["image"].shape and out["image"].dtype == np.float32
    assert 0.0 <= out["image"].min() and out["image"].max() <= 1.0
    assert np.abs(out["image"] - plain["image"]).mean() > 2e-3


def test_hed_jitter_changes_stain_and_only_bright_colour_images():
    image, _ = _tissue_like()
    assert np.allclose(HEDJitter(0.0, 0.0, p=1.0)(image=image)["image"], image, atol=1e-3)  # exact inverse
    jitter = HEDJitter(0.3, 0.05, p=1.0)
    jitter.set_random_seed(0)
    out = jitter(image=image)["image"]
    assert out.dtype == np.float32 and out.shape == image.shape and 0 <= out.min() and out.max() <= 1
    nuclei = _tissue_like()[1] > 0
    changes = [np.abs(jitter(image=image)["image"][nuclei] - image[nuclei]).mean() for _ in range(8)]
    assert max(changes) > 0.01  # the stain of the nuclei changes
    one = np.ones(3, np.float32)
    more_h = jitter.apply(image, factors=np.array([1.5, 1, 1], np.float32), shifts=0 * one)
    assert more_h[nuclei].mean() < image[nuclei].mean() - 0.02  # more haematoxylin: darker nuclei
    change = np.abs(more_h - image).mean(axis=2)
    assert change[nuclei].mean() > 2 * change[~nuclei].mean()  # the lightly stained background less so
    dark = np.clip(1.0 - image, 0, 1)  # fluorescence-like: dark background, left alone
    np.testing.assert_array_equal(jitter(image=dark)["image"], dark)
    gray = image[:, :, :1]
    np.testing.assert_array_equal(jitter(image=gray)["image"], gray)


def test_scale_jitter_zooms_nuclei():
    image, labels = _tissue_like((160, 160))
    cfg = _only(affine_p=1.0, scale_min=2.0, scale_max=2.0, rotate_limit=0.0, shear=0.0)
    out = build_augment(cfg, 160, seed=0)(image=image, mask=labels)
    areas = np.bincount(out["mask"].ravel())[1:]
    whole = areas[areas > 0].max()
    assert whole == pytest.approx(4 * np.bincount(labels.ravel())[1], rel=0.1)


def test_downscale_back_up_with_lanczos_keeps_edges_sharper():
    image, labels = _tissue_like((112, 112))
    on = dict(downscale_p=1.0, downscale_min=0.4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plain, linear = _pair(_only(**on), image, labels)
        _, lanczos = _pair(_only(**on, downscale_lanczos=True), image, labels)
    np.testing.assert_array_equal(lanczos["mask"], plain["mask"])
    assert 0.0 <= lanczos["image"].min() and lanczos["image"].max() <= 1.0
    assert not np.allclose(lanczos["image"], linear["image"])

    def edges(img: np.ndarray) -> float:  # mean gradient magnitude: sharper edges, larger
        return float(np.abs(np.diff(img, axis=0)).mean() + np.abs(np.diff(img, axis=1)).mean())

    assert edges(plain["image"]) > edges(lanczos["image"]) > edges(linear["image"])


def test_new_augment_settings_validated():
    with pytest.raises(ValueError, match="hed_p"):
        build_augment(AugmentConfig(hed_p=2.0), 64)
    with pytest.raises(ValueError, match="jpeg_quality_min"):
        build_augment(AugmentConfig(jpeg_quality_min=0), 64)
    with pytest.raises(ValueError, match="downscale_min"):
        build_augment(AugmentConfig(downscale_min=1.5), 64)


# ---------------------------------------------------------------- recipes


@pytest.mark.parametrize("name", ["default_v2", "default_v2_tiny"])
def test_v2_recipes_parse_and_round_trip(name, tmp_path):
    raw = yaml.safe_load((REPO / "configs" / f"{name}.yaml").read_text())
    cfg = from_dict(TrainConfig, raw)
    assert [e.path for e in cfg.extra_data] == ["../shared/data/external/bbbc039"]
    assert cfg.extra_data[0].exclude == ["bbbc039_heldout"] and cfg.amp == "auto"
    assert cfg.max_minutes and cfg.patience >= cfg.epochs  # the budget, not early stopping, ends it
    assert all(getattr(cfg.augment, p) > 0 for p in NEW_P) and cfg.augment.scale_min == 0.5 and cfg.augment.scale_max == 2.0
    assert cfg.model.params["depth"] == 4 and cfg.targets.mode == "contour"
    assert "monuseg" not in json.dumps(raw).lower()
    save_json(cfg, tmp_path / "train.json")
    assert load_json(TrainConfig, tmp_path / "train.json") == cfg
    assert TrainConfig(extra_data=["some/folder"]).extra_data == [ExtraDataConfig(path="some/folder")]


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_recipe_parses_and_never_trains_on_measuring_sets(path, tmp_path):
    raw = yaml.safe_load(path.read_text())
    if path.stem.startswith("fine_tune"):  # fine-tuning settings (FineTuneConfig), not a training recipe
        from nucleiseg.training.finetune import FineTuneConfig

        assert from_dict(FineTuneConfig, raw).parent == raw["parent"]
        assert "monuseg" not in json.dumps(raw).lower()
        return
    cfg = from_dict(TrainConfig, raw)
    assert "monuseg" not in json.dumps(raw).lower()  # MoNuSeg is for measuring only
    for extra in cfg.extra_data:
        if "bbbc039" in extra.path:
            assert "bbbc039_heldout" in extra.exclude
    save_json(cfg, tmp_path / "train.json")
    assert load_json(TrainConfig, tmp_path / "train.json") == cfg


def test_default_recipe_stages_chain():
    """Each stage of the bundled default's recipe (and stage 4, measured, not bundled) starts from the previous one's run folder."""
    stages = ["default", "default_v4", "default_v5", "default_v6"]
    cfgs = [from_dict(TrainConfig, yaml.safe_load((REPO / "configs" / f"{s}.yaml").read_text())) for s in stages]
    for before, after in zip(cfgs, cfgs[1:], strict=False):
        assert after.init_weights == before.out
        assert after.model == before.model and after.targets == before.targets


def test_training_run_records_extra_images(tmp_path, dsb_root):
    from nucleiseg.training import train

    extra = _label_folder(tmp_path / "ext", [bbbc039_heldout()[0], "e1", "e2"])
    cfg = TrainConfig(
        data=str(dsb_root), out=str(tmp_path / "run"), limit_images=3, val_max_images=1, crop_size=48,
        batch_size=2, steps_per_epoch=1, epochs=1, threads=1, amp="off",
        extra_data=[ExtraDataConfig(path=str(extra), name="ext")],
    )
    cfg.model.params = {"depth": 2, "base_channels": 4}
    out = train(cfg, progress=False)
    split = json.loads((out / "split.json").read_text())
    assert split["extra"][0]["used"] == ["ext/e1", "ext/e2"] and split["extra"][0]["excluded"] == [bbbc039_heldout()[0]]
    assert len(split["train"]) == 3 and len(split["val"]) == 67
    report = json.loads((out / "report.json").read_text())
    assert report["n_train"] == 3 and report["n_train_extra"] == 2
    assert sum(c["share"] for c in report["sampling"]) == pytest.approx(1.0, abs=1e-3)
    assert load_json(TrainConfig, out / "train.json").extra_data == cfg.extra_data
