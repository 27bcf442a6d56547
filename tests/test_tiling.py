"""Sliding-window prediction, test-time augmentation and rescaling."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from nucleiseg.inference import (
    axis_windows,
    DIHEDRAL,
    apply_dihedral,
    blend_window,
    invert_dihedral,
    multiscale_predictor,
    predict_tiled,
    rescale_image,
    resize_labels,
    resize_probabilities,
    scale_factor,
    tta_predictor,
)


def sigmoid_predictor(batch: np.ndarray) -> np.ndarray:
    """Pointwise predictor with K = 2 outputs (exactly translation-equivariant)."""
    s = 1.0 / (1.0 + np.exp(-batch.mean(axis=1, keepdims=True)))
    return np.concatenate([s, 1.0 - s], axis=1).astype(np.float32)


def box_predictor(batch: np.ndarray) -> np.ndarray:
    """3x3 box filter + sigmoid on channel 0: equivariant away from the borders."""
    filtered = ndi.uniform_filter(batch[:, :1], size=(1, 1, 3, 3), mode="reflect")
    return (1.0 / (1.0 + np.exp(-filtered))).astype(np.float32)


class Recorder:
    """Wrap a predictor and record every batch shape it was given."""

    def __init__(self, fn):
        self.fn = fn
        self.shapes: list[tuple[int, ...]] = []

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        assert batch.dtype == np.float32
        self.shapes.append(batch.shape)
        return self.fn(batch)


@pytest.mark.parametrize("shape", [(16, 16), (1, 300), (700, 900), (300, 1), (256, 256), (257, 513)])
@pytest.mark.parametrize("blend", ["gaussian", "linear", "constant"])
def test_tiled_equals_untiled_for_pointwise_predictor(shape, blend):
    rng = np.random.default_rng(0)
    image = rng.normal(0, 2, (3, *shape)).astype(np.float32)
    rec = Recorder(sigmoid_predictor)
    out = predict_tiled(rec, image, tile=256, overlap=0.25, batch_size=3, stride=32, blend=blend)
    assert out.shape == (2, *shape) and out.dtype == np.float32
    expected = sigmoid_predictor(image[None])[0]
    assert np.abs(out - expected).max() < 1e-5
    assert all(b <= 3 and h % 32 == 0 and w % 32 == 0 and h <= 256 and w <= 256 for b, _, h, w in rec.shapes)


def test_large_image_is_tiled_in_bounded_batches():
    image = np.random.default_rng(1).normal(size=(1, 700, 900)).astype(np.float32)
    rec = Recorder(sigmoid_predictor)
    predict_tiled(rec, image, tile=256, overlap=0.25, batch_size=4, stride=32)
    n_tiles = sum(s[0] for s in rec.shapes)
    # overlap >= 64: 4 windows of 224 down (starts 0,159,317,476), 5 of 256 across (0,161,322,483,644).
    assert n_tiles == 4 * 5
    assert max(s[0] for s in rec.shapes) == 4 and all(s[2:] == (224, 256) for s in rec.shapes)


@pytest.mark.parametrize("size", [33, 255, 256, 257, 300, 700, 1030, 1272, 2048, 5000])
@pytest.mark.parametrize(("tile", "step"), [(256, 192), (1024, 768), (64, 32)])
def test_axis_windows_cover_the_axis_with_the_overlap_and_few_pixels(size, tile, step):
    length, starts = axis_windows(size, tile, step, stride=32)
    if size <= tile:
        assert (length, starts) == (size, [0])
        return
    assert length <= tile and length % 32 == 0 and starts[0] == 0 and starts[-1] == size - length
    assert all(b - a <= length - (tile - step) for a, b in zip(starts, starts[1:], strict=False))  # the overlap holds
    # never more windows than tile-long ones every step, and they cover fewer pixels
    old = len(range(0, size - tile + 1, step)) + ((size - tile) % step != 0)
    assert len(starts) <= old and len(starts) * length <= old * tile


def test_axis_windows_examples():
    assert axis_windows(2048, 1024, 768, 32) == (864, [0, 592, 1184])
    assert axis_windows(1272, 1024, 768, 32) == (768, [0, 504])


def test_small_and_strip_images_are_padded_to_stride():
    rec = Recorder(sigmoid_predictor)
    predict_tiled(rec, np.zeros((3, 16, 16), np.float32), tile=512, stride=32)
    assert rec.shapes == [(1, 3, 32, 32)]
    rec = Recorder(sigmoid_predictor)
    out = predict_tiled(rec, np.ones((3, 1, 10000), np.float32), tile=512, stride=32, batch_size=8)
    assert out.shape == (2, 1, 10000)
    assert all(s[2:] == (32, 512) for s in rec.shapes)
    assert np.allclose(out[0], 1.0 / (1.0 + np.exp(-1.0)), atol=1e-6)


def test_one_window_returns_the_predictors_output_cropped():
    """An image inside one tile: one call, the prediction of the padded image cropped back, bit for bit."""
    image = np.random.default_rng(3).normal(size=(3, 250, 300)).astype(np.float32)
    rec = Recorder(box_predictor)
    out = predict_tiled(rec, image, tile=1024, stride=32)
    assert rec.shapes == [(1, 3, 256, 320)]
    padded = np.pad(image, ((0, 0), (0, 6), (0, 20)), mode="reflect")
    assert out.dtype == np.float32 and out.flags.c_contiguous
    assert np.array_equal(out, box_predictor(padded[None])[0, :, :250, :300])
    with pytest.raises(ValueError, match="predictor returned shape"):
        predict_tiled(lambda b: b[:, :1, :10], image, tile=1024, stride=32)


def test_tiled_filter_matches_untiled_away_from_borders():
    rng = np.random.default_rng(2)
    image = ndi.gaussian_filter(rng.normal(size=(1, 300, 420)), (0, 2, 2)).astype(np.float32) * 5
    expected = box_predictor(image[None])[0]
    for blend in ("gaussian", "linear"):
        out = predict_tiled(box_predictor, image, tile=128, overlap=0.25, batch_size=2, stride=32, blend=blend)
        # Tile borders see reflected context: the error there is bounded and blended down.
        assert np.abs(out - expected)[:, 1:-1, 1:-1].max() < 0.05
    out = predict_tiled(box_predictor, image, tile=128, overlap=0.25, stride=32, blend="gaussian")
    interior_error = np.abs(out - expected)[:, 1:-1, 1:-1]
    assert np.median(interior_error) < 1e-6


def test_blend_window_never_zero():
    for blend in ("gaussian", "linear", "constant"):
        w = blend_window((64, 48), blend, ramp=16)
        assert w.shape == (64, 48) and w.min() > 0 and w.max() == pytest.approx(1.0)
    g = blend_window((64, 64), "gaussian")
    assert g[32, 32] > g[0, 32] > 0


def test_predict_tiled_validates_inputs():
    image = np.zeros((3, 8, 8), np.float32)
    with pytest.raises(ValueError, match="C, H, W"):
        predict_tiled(sigmoid_predictor, np.zeros((8, 8), np.float32))
    with pytest.raises(ValueError, match="overlap"):
        predict_tiled(sigmoid_predictor, image, overlap=1.0)
    with pytest.raises(ValueError, match="blend"):
        predict_tiled(sigmoid_predictor, image, blend="cosine")
    with pytest.raises(ValueError, match="predictor returned"):
        predict_tiled(lambda b: b[:, :, :4], image)


@pytest.mark.parametrize("k", DIHEDRAL)
def test_dihedral_round_trip(k):
    x = np.arange(2 * 3 * 4 * 6, dtype=np.float32).reshape(2, 3, 4, 6)
    y = apply_dihedral(x, k)
    assert y.flags.c_contiguous
    assert y.shape == ((2, 3, 4, 6) if k % 2 == 0 else (2, 3, 6, 4))
    assert np.array_equal(invert_dihedral(y, k), x)


def test_dihedral_transforms_are_distinct():
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    seen = {apply_dihedral(x, k).tobytes() for k in DIHEDRAL}
    assert len(seen) == 8
    with pytest.raises(ValueError, match="0..7"):
        apply_dihedral(x, 8)


def test_tta_of_equivariant_predictor_is_identity():
    x = np.random.default_rng(3).normal(size=(2, 3, 32, 64)).astype(np.float32)
    assert np.allclose(tta_predictor(sigmoid_predictor)(x), sigmoid_predictor(x), atol=1e-6)


def test_tta_averages_a_non_equivariant_predictor():
    def ramp_predictor(batch: np.ndarray) -> np.ndarray:
        w = batch.shape[-1]
        return np.broadcast_to(np.linspace(0, 1, w, dtype=np.float32), batch[:, :1].shape).copy()

    x = np.zeros((1, 1, 32, 32), np.float32)
    # A left-right ramp averaged with its flip is flat 0.5.
    flat = tta_predictor(ramp_predictor, transforms=[0, 4])(x)
    assert np.allclose(flat, 0.5)
    # Rotations 0 and 2 also cancel; rotations 1 and 3 turn it into an up-down ramp that cancels too.
    assert np.allclose(tta_predictor(ramp_predictor)(x), 0.5, atol=1e-6)
    half = tta_predictor(ramp_predictor, transforms=[0, 1])(x)[0, 0]
    ramp = np.linspace(0, 1, 32)
    # A quarter turn (counter-clockwise) of a left-to-right ramp, turned back, runs top to bottom.
    assert np.allclose(half, (ramp[None, :] + ramp[:, None]) / 2, atol=1e-6)


def test_tta_inside_tiling_handles_non_square_tiles():
    image = np.random.default_rng(4).normal(size=(3, 40, 100)).astype(np.float32)
    out = predict_tiled(tta_predictor(sigmoid_predictor), image, tile=64, stride=32)
    assert np.abs(out - sigmoid_predictor(image[None])[0]).max() < 1e-5


def test_multiscale_predictor():
    x = np.random.default_rng(5).normal(size=(2, 3, 64, 96)).astype(np.float32)
    rec = Recorder(sigmoid_predictor)
    out = multiscale_predictor(rec, [1.0], stride=32)(x)
    assert np.allclose(out, sigmoid_predictor(x), atol=1e-6)
    rec = Recorder(sigmoid_predictor)
    smooth = ndi.gaussian_filter(x, (0, 0, 4, 4)) * 4
    out = multiscale_predictor(rec, [0.5, 1.0, 1.5], stride=32)(smooth)
    assert out.shape == (2, 2, 64, 96)
    assert [s[2:] for s in rec.shapes] == [(32, 64), (64, 96), (96, 160)]
    assert np.abs(out - sigmoid_predictor(smooth)).max() < 0.05
    with pytest.raises(ValueError, match="scales"):
        multiscale_predictor(sigmoid_predictor, [0.0])


def test_rescale_image_dtypes_and_shapes():
    img = np.random.default_rng(6).random((40, 60, 3)).astype(np.float32)
    up = rescale_image(img, 2.0)
    assert up.shape == (80, 120, 3) and up.dtype == np.float32
    down = rescale_image(img, 0.5)
    assert down.shape == (20, 30, 3) and down.dtype == np.float32
    assert 0.0 <= down.min() and down.max() <= 1.0
    u8 = rescale_image((img[..., 0] * 255).astype(np.uint8), 1.5)
    assert u8.shape == (60, 90) and u8.dtype == np.uint8
    assert rescale_image(img, 1.0) is not img and np.array_equal(rescale_image(img, 1.0), img)
    with pytest.raises(ValueError, match="factor"):
        rescale_image(img, 0.0)


@pytest.mark.parametrize("factor", [0.37, 0.5, 1.6])
def test_rescale_gray_in_colour_channels_equals_each_channel_alone(factor):
    """Identical channels are resized once; the result equals resizing each channel on its own."""
    gray = np.random.default_rng(7).random((41, 57)).astype(np.float32)
    out = rescale_image(np.repeat(gray[..., None], 3, axis=2), factor)
    alone = rescale_image(gray, factor)
    assert out.shape == alone.shape + (3,)
    assert all(np.array_equal(out[..., c], alone) for c in range(3))
    colour = np.stack([gray, gray, gray[::-1]], axis=2)  # one channel differs: resized channel by channel
    mixed = rescale_image(colour, factor)
    assert np.array_equal(mixed[..., 0], alone) and np.array_equal(mixed[..., 2], rescale_image(gray[::-1].copy(), factor))


def test_resize_labels_keeps_ids(make_disks):
    labels = make_disks((60, 80), [(15, 15), (15, 60), (45, 40)], 10) * 7
    labels = labels.astype(np.uint16)
    for shape in [(120, 160), (30, 40), (61, 79)]:
        out = resize_labels(labels, shape)
        assert out.shape == shape and out.dtype == np.uint16
        assert set(np.unique(out)) == set(np.unique(labels))
    back = resize_labels(resize_labels(labels, (120, 160)), (60, 80))
    assert np.array_equal(back, labels)


def test_resize_probabilities():
    probs = np.random.default_rng(7).random((3, 20, 30)).astype(np.float32)
    up = resize_probabilities(probs, (40, 60))
    assert up.shape == (3, 40, 60) and up.dtype == np.float32
    assert up.min() >= 0.0 and up.max() <= 1.0
    assert np.allclose(resize_probabilities(up, (20, 30)).mean(axis=(1, 2)), probs.mean(axis=(1, 2)), atol=0.02)
    const = np.full((1, 9, 9), 0.3, np.float32)
    assert np.allclose(resize_probabilities(const, (4, 17)), 0.3)


def test_scale_factor():
    assert scale_factor(36.0, 18.0) == pytest.approx(0.5)
    assert scale_factor(9.0, 18.0) == pytest.approx(2.0)
    assert scale_factor(1.0, 18.0) == 4.0
    assert scale_factor(1000.0, 18.0) == 0.25
    assert scale_factor(float("nan"), 18.0) == 1.0
    assert scale_factor(0.0, 18.0) == 1.0
    with pytest.raises(ValueError, match="target_diameter"):
        scale_factor(10.0, 0.0)
