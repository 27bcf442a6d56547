"""Memory of the whole-image path: a gray image fed to a colour network is not copied per channel."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from nucleiseg.config import InferConfig, ModelBundleConfig
from nucleiseg.inference.segmenter import Segmenter
from nucleiseg.inference.tiling import predict_tiled
from nucleiseg.postprocess.watershed import probabilities_to_labels
from nucleiseg.transforms.normalize import normalize_image

SIDE = 1024


def _disks(side: int = SIDE, spacing: int = 32, radius: int = 9) -> np.ndarray:
    """A gray uint8 image of bright disks on a grid, with a slow intensity ramp."""
    yy, xx = np.mgrid[:side, :side]
    inside = (yy % spacing - spacing // 2) ** 2 + (xx % spacing - spacing // 2) ** 2 <= radius**2
    return (np.where(inside, 150, 20) + (xx * 60) // side).astype(np.uint8)


def _predictor(batch: np.ndarray) -> np.ndarray:
    """A pointwise 'network' that reads every channel: foreground from the channel mean, contour 0."""
    fg = batch.mean(axis=1, keepdims=True, dtype=np.float32)
    zeros = np.zeros_like(fg)
    return np.concatenate([fg, zeros, zeros], axis=1)


def _segmenter(predictor=_predictor) -> Segmenter:
    cfg = ModelBundleConfig()
    cfg.normalize.channels = 3
    cfg.infer = InferConfig(tile=256, batch_size=1, rescale=False, block_pixels=0)
    return Segmenter(cfg, predictor, stride=8, name="pointwise")


def test_shared_channels_are_a_read_only_view_with_the_same_values():
    image = _disks(200)
    cfg = _segmenter().config.normalize
    copied = normalize_image(image, cfg)
    shared = normalize_image(image, cfg, share_channels=True)
    assert shared.shape == copied.shape == (200, 200, 3) and shared.dtype == np.float32
    assert np.array_equal(shared, copied)
    assert shared.strides[2] == 0 and not shared.flags.writeable
    with pytest.raises(ValueError):
        shared[0, 0, 0] = 1.0
    rgb = np.dstack([image, image // 2, image // 3])  # a colour image is never shared
    assert np.array_equal(normalize_image(rgb, cfg, share_channels=True), normalize_image(rgb, cfg))


def test_gray_image_held_while_the_network_runs():
    """Bytes per pixel held (traced) while the network runs: the normalised input and the output.

    Before, the normalised gray image was replicated into a 3-channel float32 copy (12 bytes per
    pixel) held during the whole prediction: about 26 bytes per pixel in all; now its channels
    share one plane (4 bytes per pixel): about 18.
    """
    image = _disks()
    held: list[int] = []

    def watched(batch: np.ndarray) -> np.ndarray:
        held.append(tracemalloc.get_traced_memory()[0])
        return _predictor(batch)

    seg = _segmenter(watched)
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        result = seg.segment(image, keep_probabilities=False)
    finally:
        tracemalloc.stop()
    per_pixel = (max(held) - start) / image.size
    assert result.count > 500
    assert per_pixel < 20, f"{per_pixel:.1f} bytes per pixel held while the network runs"


def test_labels_are_those_of_the_copied_input():
    image = _disks(512)
    seg = _segmenter()
    cfg, infer = seg.config, seg.config.infer
    norm = normalize_image(image, cfg.normalize)  # the contiguous 3-channel copy
    probs = predict_tiled(_predictor, norm.transpose(2, 0, 1), tile=infer.tile, overlap=infer.overlap,
                          batch_size=infer.batch_size, stride=8, blend=infer.blend)
    expected = probabilities_to_labels(probs, cfg.postprocess)
    result = seg.segment(image, keep_probabilities=True)
    assert np.array_equal(result.labels, expected)
    assert np.array_equal(result.probabilities, probs)


def test_shared_channels_are_rescaled_once_with_the_same_result():
    image = _disks(300, spacing=60, radius=20)
    seg = _segmenter()
    seg.config.infer = InferConfig(tile=256, batch_size=1, diameter=36.0, target_diameter=18.0, block_pixels=0)
    seen: list[np.ndarray] = []

    def watched(batch: np.ndarray) -> np.ndarray:
        seen.append(batch)
        return _predictor(batch)

    seg.predictor = watched
    result = seg.segment(image)
    assert result.scale == pytest.approx(0.5)
    assert seen and all(np.array_equal(b[:, 0], b[:, 2]) for b in seen)
    from nucleiseg.inference.scale import rescale_image

    zoomed = rescale_image(normalize_image(image, seg.config.normalize), 0.5)
    assert zoomed.shape == (150, 150, 3)
    assert np.array_equal(seen[0][0, :, :150, :150], zoomed.transpose(2, 0, 1))


def test_split_images_go_to_the_network_in_small_windows_one_at_a_time():
    """A small image inside one tile is one window; a larger one is split into windows of at most SPLIT_TILE."""
    from nucleiseg.inference.tiling import SPLIT_PIXELS, SPLIT_TILE

    calls: list[tuple[int, ...]] = []

    def record(batch: np.ndarray) -> np.ndarray:
        calls.append(batch.shape)
        return np.full((batch.shape[0], 3, *batch.shape[2:]), 0.5, np.float32)

    assert 900 * 900 <= SPLIT_PIXELS < 1000 * 1000
    predict_tiled(record, np.zeros((3, 900, 900), np.float32), tile=1024, batch_size=4, stride=32)
    assert calls == [(1, 3, 928, 928)]  # padded to the stride, no overlap spent
    for side, n in ((1000, 4), (1448, 9)):
        calls.clear()
        out = predict_tiled(record, np.zeros((3, side, side), np.float32), tile=1024, batch_size=4, stride=32)
        assert out.shape == (3, side, side) and np.allclose(out, 0.5)
        assert len(calls) == n and all(b == 1 and max(h, w) <= SPLIT_TILE for b, _, h, w in calls)


def test_postprocess_temporaries():
    """Traced peak of post-processing beyond its input, per pixel: about 27 bytes before, 21 now
    (int64 copies for counting, the negated relief and markers kept through the last steps)."""
    from nucleiseg.config import PostprocessConfig

    side = 1024
    yy, xx = np.mgrid[:side, :side]
    dist = np.hypot(yy % 32 - 16, xx % 32 - 16)
    fg = (dist <= 10).astype(np.float32) * 0.9
    fg[::97] = 0.0
    probs = np.stack([fg, ((dist > 8) & (dist <= 11)).astype(np.float32) * 0.8, np.zeros_like(fg)])
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        labels = probabilities_to_labels(probs, PostprocessConfig(min_confidence=0.5))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert labels.max() > 1000
    assert (peak - start) / fg.size < 24


def test_counting_and_measuring_labels_take_no_eight_byte_copy(traced_peak):
    """``Result.count``, ``estimate_diameter`` and ``drop_unconfident`` on a whole int32 label image.

    ``np.bincount`` converts its input to intp: on the whole image that was an 8-byte copy per
    pixel (512 MB at 64 Mpx; the web app's peak for a large upload came from ``count``).
    """
    from nucleiseg.inference.segmenter import Result
    from nucleiseg.postprocess.watershed import drop_unconfident, estimate_diameter

    side = 4096  # 16.8 Mpx: the chunk's 8 MB of intp is 0.5 bytes per pixel
    labels = np.zeros((side, side), np.int32)
    labels[::8, ::8] = np.arange(1, (side // 8) ** 2 + 1, dtype=np.int32).reshape(side // 8, side // 8)
    labels[8, 8] = 0  # ids need not all be used
    fg = np.full(labels.shape, 0.7, np.float32)
    fg[labels == 7] = 0.1

    def traced(step):
        value, peak = traced_peak(step)
        return value, peak / labels.size

    count, per_px = traced(lambda: Result(labels, None, None, 1.0).count)
    assert count == (side // 8) ** 2 - 1 and per_px < 1.5
    diameter, per_px = traced(lambda: estimate_diameter(labels))
    assert diameter == pytest.approx(2 / np.sqrt(np.pi)) and per_px < 1.5
    kept, per_px = traced(lambda: drop_unconfident(labels, fg, 0.5))
    assert int(kept.max()) == count - 1 and not kept[labels == 7].any()
    assert per_px < 4 + 1.5  # its output, int32, and the chunked counts
