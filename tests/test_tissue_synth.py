"""Synthetic H&E rendering of fluorescence crops (``AugmentConfig.tissue_p``, issue 15)."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest

from nucleiseg.config import AugmentConfig, NormalizeConfig
from nucleiseg.io.dsb import load_sample
from nucleiseg.transforms import build_augment, normalize_image
from nucleiseg.transforms.tissue import TissueSynth, render_tissue
from tests.conftest import disk_labels


def _fluorescence(shape: tuple[int, int] = (96, 96)) -> tuple[np.ndarray, np.ndarray]:
    """Bright disks on a dark background (float32 RGB 0..1) and their labels."""
    labels = disk_labels(shape, [(20, 20), (30, 70), (70, 40), (75, 80)], 10)
    gray = np.where(labels > 0, 0.8, 0.05).astype(np.float32)
    gray += np.random.default_rng(0).normal(0, 0.01, shape).astype(np.float32)
    return np.repeat(np.clip(gray, 0, 1)[:, :, None], 3, axis=2), labels


def _only(**on: float) -> AugmentConfig:
    off = {f.name: 0.0 for f in dataclasses.fields(AugmentConfig) if f.name.endswith("_p")}
    return AugmentConfig(**{**off, "flips": False, "rotate90": False, **on})


@pytest.mark.parametrize("seed", range(5))
def test_rendering_makes_dark_purple_nuclei_on_a_bright_stained_background(seed):
    image, labels = _fluorescence()
    out = render_tissue(image, np.random.default_rng(seed))
    assert out.shape == image.shape and out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 1.0
    nuclei, background = labels > 0, labels == 0
    assert out[background].mean() > 0.5  # bright-background, as stained tissue is
    gray = out.mean(axis=2)
    assert gray[nuclei].mean() < gray[background].mean() - 0.2  # nuclei are the dark objects
    blue, green = out[..., 2][nuclei].mean(), out[..., 1][nuclei].mean()
    assert blue > green  # haematoxylin: blue-purple nuclei


def test_rendering_is_a_pure_function_of_the_seed():
    image, _ = _fluorescence()
    a = render_tissue(image, np.random.default_rng(7))
    np.testing.assert_array_equal(a, render_tissue(image, np.random.default_rng(7)))
    assert np.abs(a - render_tissue(image, np.random.default_rng(8))).mean() > 0.01


def test_transform_leaves_bright_and_gray_crops_alone():
    image, _ = _fluorescence()
    synth = TissueSynth(p=1.0)
    synth.set_random_seed(0)
    bright = 1.0 - image
    np.testing.assert_array_equal(synth(image=bright)["image"], bright)
    gray = image[:, :, :1]
    np.testing.assert_array_equal(synth(image=gray)["image"], gray)
    assert synth(image=image)["image"].mean() > 0.5


def test_pipeline_keeps_labels_and_leaves_the_transform_out_by_default():
    image, labels = _fluorescence()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plain = build_augment(_only(), 80, seed=3)(image=image, mask=labels)
        out = build_augment(_only(tissue_p=1.0), 80, seed=3)(image=image, mask=labels)
    np.testing.assert_array_equal(out["mask"], plain["mask"])
    assert out["image"].mean() > 0.5 > plain["image"].mean()
    assert "TissueSynth" not in [type(t).__name__ for t in build_augment(AugmentConfig(), 64).transforms]
    assert "TissueSynth" not in [type(t).__name__ for t in build_augment(_only(tissue_p=1.0), 64, channels=1).transforms]


def test_rendering_of_a_real_fluorescence_image(real_sample_dirs):
    """On real DSB fluorescence crops, the labelled nuclei come out darker than the stroma."""
    rendered = 0
    for folder in real_sample_dirs:
        sample = load_sample(folder)
        norm = normalize_image(sample.image, NormalizeConfig())
        if norm.mean() > 0.5 or not sample.labels.any():
            continue
        out = render_tissue(norm, np.random.default_rng(0)).mean(axis=2)
        nuclei = sample.labels > 0
        assert out[nuclei].mean() < out[~nuclei].mean() - 0.15, folder.name
        rendered += 1
    assert rendered >= 1
