"""Dask: folders on a 2-worker LocalCluster equal the serial batch; block-wise labels equal one pass."""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import cloudpickle
import dask.array as da
import numpy as np
import pytest
import tifffile
import torch
import zarr
from scipy import ndimage as ndi

from nucleiseg.config import InferConfig, ModelBundleConfig, ModelConfig, PostprocessConfig, save_json
from nucleiseg.distributed import (
    dask_client,
    parse_spec,
    pending_items,
    segment_dask,
    segment_items_blockwise,
    segment_items_dask,
    write_labels_zarr,
)
from nucleiseg.distributed.stitch import assemble
from nucleiseg.inference.batch import OutputOptions, segment_items
from nucleiseg.inference.segmenter import Segmenter
from nucleiseg.io.images import read_image, read_labels
from nucleiseg.io.labels import discover_inputs
from nucleiseg.metrics import match_labels

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
NAMES = ("fluo_small", "tissue_he", "tissue_dense")
BLOCK = 512


def _warm() -> int:
    """Import the heavy modules on a worker once, so the tests measure work, not imports."""
    import nucleiseg.distributed.blocks  # noqa: F401
    import nucleiseg.inference.segmenter  # noqa: F401

    return os.getpid()


def _loads() -> int:
    from nucleiseg.distributed.workers import LOADS

    return LOADS["count"]


@pytest.fixture(scope="module")
def client():
    """One LocalCluster (2 worker processes, loopback only) for the whole module."""
    # Functions of this module travel by value, whatever the pytest import mode.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    with dask_client("local:2") as c:
        c.run(_warm)
        yield c
    cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    assert c.status == "closed"


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Three real example images, their ground truth, and one broken file."""
    src = tmp_path / "in"
    src.mkdir()
    for name in NAMES:
        shutil.copy(EXAMPLES / f"{name}.png", src)
        shutil.copy(EXAMPLES / f"{name}_masks.tif", src)
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    return src


def _without_seconds(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("seconds", "timings")} for r in records]


def _assert_same_outputs(serial: Path, dist: Path, summary_a, summary_b) -> None:
    assert _without_seconds(summary_a.images) == _without_seconds(summary_b.images)
    assert summary_a.failures == summary_b.failures
    for record in summary_a.images:
        for name in record["outputs"]:
            assert (dist / name).is_file(), name
        a = read_labels(serial / f"{record['id']}_masks.tif")
        b = read_labels(dist / f"{record['id']}_masks.tif")
        np.testing.assert_array_equal(a, b)


def test_parse_spec() -> None:
    assert parse_spec("local:3") == ("local", 3)
    assert parse_spec("local")[0] == "local" and parse_spec("local")[1] >= 1
    assert parse_spec("tcp://10.0.0.5:8786") == ("address", "tcp://10.0.0.5:8786")
    for bad in ("local:0", "remote", "10.0.0.5:8786", "local:x"):
        with pytest.raises(ValueError, match="--dask"):
            parse_spec(bad)


def test_folder_equals_serial_classical(client, folder: Path, tmp_path: Path) -> None:
    items = discover_inputs([folder])
    options = OutputOptions(measure=True, overlay=True, rle=str(tmp_path / "dist.csv"))
    serial = segment_items(items, tmp_path / "serial", Segmenter.from_pretrained("classical"),
                           replace(options, rle=str(tmp_path / "serial.csv")), progress=False)
    dist = segment_items_dask(items, tmp_path / "dist", "classical", options, client=client, progress=False)
    assert len(dist.images) == 3 and len(dist.failures) == 1 and dist.nuclei > 50
    assert dist.failures[0]["id"] == "broken" and "broken.png" in dist.failures[0]["error"]
    _assert_same_outputs(tmp_path / "serial", tmp_path / "dist", serial, dist)
    assert (tmp_path / "serial.csv").read_text() == (tmp_path / "dist.csv").read_text()
    sidecar = json.loads((tmp_path / "dist" / "run.json").read_text())
    assert sidecar["executor"]["kind"] == "dask" and sidecar["executor"]["workers"] == 2
    assert sidecar["summary"]["failed"] == 1
    assert [r["id"] for r in sidecar["images"]] == [i.id for i in items if i.id != "broken"]


@pytest.fixture
def tiny_unet(tmp_path: Path) -> Path:
    """A random 3-level U-Net saved as a model folder (config.json + weights.safetensors)."""
    from nucleiseg.models import create_model
    from nucleiseg.training.checkpoint import save_weights

    torch.manual_seed(0)
    folder = tmp_path / "tiny"
    folder.mkdir()
    params = {"depth": 3, "base_channels": 8}
    save_weights(create_model("unet", 3, 3, **params), folder / "weights.safetensors")
    save_json(ModelBundleConfig(model=ModelConfig(arch="unet", params=params), name="tiny"), folder / "config.json")
    return folder


def test_folder_equals_serial_network_model_loaded_once_per_worker(client, folder: Path, tmp_path: Path, tiny_unet) -> None:
    items = discover_inputs([folder])
    segmenter = Segmenter.from_pretrained(tiny_unet)
    # A random network is nearly flat: thresholds at its median give non-trivial labels. Workers
    # run torch with one thread; the serial reference does too, so the floats are identical.
    probs = segmenter.segment(read_image(EXAMPLES / "fluo_small.png")).probabilities
    markers = probs[0] * (1 - probs[1]) * (1 - probs[2])
    post = replace(PostprocessConfig(), threshold=float(np.median(probs[0])), marker_threshold=float(np.median(markers)))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        serial = segment_items(items, tmp_path / "serial", segmenter, post=post, progress=False)
    finally:
        torch.set_num_threads(threads)
    before = sum(client.run(_loads).values())
    dist = segment_items_dask(items, tmp_path / "dist", tiny_unet, post=post, client=client, progress=False)
    assert serial.nuclei > 0
    _assert_same_outputs(tmp_path / "serial", tmp_path / "dist", serial, dist)
    assert sum(client.run(_loads).values()) - before <= 2  # at most once per worker, not per image
    assert json.loads((tmp_path / "dist" / "run.json").read_text())["model_hash"] == segmenter.model_hash


def test_resume_skips_completed_images(client, folder: Path, tmp_path: Path) -> None:
    items = discover_inputs([folder])
    out = tmp_path / "out"
    options = OutputOptions(png=True)
    first = segment_items_dask(items, out, "classical", options, client=client, progress=False)
    assert [i.id for i in pending_items(items, out, options)] == ["broken"]
    assert len(pending_items(items, out, OutputOptions(measure=True))) == 4  # other outputs asked for
    stamps = {r["id"]: (out / f"{r['id']}_masks.tif").stat().st_mtime_ns for r in first.images}
    (out / "tissue_he_masks.png").unlink()  # one image loses an output: only it is redone
    again = segment_items_dask(items, out, "classical", options, client=client, resume=True, progress=False)
    assert again.skipped == ["fluo_small", "tissue_dense"] and len(again.failures) == 1
    # run.json covers every image: the resumed ones keep their earlier records
    assert _without_seconds(again.images) == _without_seconds(first.images)
    assert again.images[:2] == first.images[:2]  # fluo_small, tissue_dense: the very same records
    assert (out / "tissue_he_masks.png").is_file()
    for name, stamp in stamps.items():
        assert ((out / f"{name}_masks.tif").stat().st_mtime_ns == stamp) == (name != "tissue_he")
    assert sorted(json.loads((out / "run.json").read_text())["skipped"]) == ["fluo_small", "tissue_dense"]


def disk_mosaic(shape=(1500, 1500), n=150, block=BLOCK, seed=0) -> tuple[np.ndarray, np.ndarray]:
    """Bright disks of radius 8-12 on a noisy background, many centred on block borders."""
    rng = np.random.default_rng(seed)
    wanted = [(b + rng.uniform(-3, 3), t) for b in range(block, shape[0], block) for t in rng.uniform(30, shape[1] - 30, 10)]
    wanted += [(t, b + rng.uniform(-3, 3)) for b in range(block, shape[1], block) for t in rng.uniform(30, shape[0] - 30, 10)]
    wanted += [(block + 0.5, block - 0.5)]  # on a block corner
    centers: list[tuple[float, float, float]] = []
    while len(centers) < n:
        cy, cx = wanted.pop() if wanted else (rng.uniform(15, shape[0] - 15), rng.uniform(15, shape[1] - 15))
        r = rng.uniform(8, 12)
        if all((cy - y) ** 2 + (cx - x) ** 2 > (r + q + 6) ** 2 for y, x, q in centers):
            centers.append((cy, cx, r))
    truth = np.zeros(shape, np.int32)
    for k, (cy, cx, r) in enumerate(centers, 1):
        y0, x0 = int(cy - r - 1), int(cx - r - 1)
        yy, xx = np.mgrid[y0 : int(cy + r + 2), x0 : int(cx + r + 2)]
        truth[y0 : y0 + yy.shape[0], x0 : x0 + yy.shape[1]][(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = k
    image = np.where(truth > 0, 180.0, 30.0) + rng.normal(0, 6, shape)
    return np.clip(image, 0, 255).astype(np.uint8), truth


def _border_crossers(labels: np.ndarray, block: int) -> list[int]:
    """Ids of the objects whose bounding box spans two blocks."""
    boxes = ndi.find_objects(labels)
    return [
        k for k, box in enumerate(boxes, 1)
        if box is not None and any(s.start // block != (s.stop - 1) // block for s in box)
    ]


def test_blockwise_labels_equal_single_pass(client, tmp_path: Path) -> None:
    image, truth = disk_mosaic()
    path = tmp_path / "big.tif"
    tifffile.imwrite(path, image, tile=(256, 256))  # read back tile by tile, never whole
    single = Segmenter.from_pretrained("classical").segment(image).labels
    labels = segment_dask(path, "classical", block=BLOCK, client=client)
    assert labels.chunks[0][0] == BLOCK and labels.dtype == np.int32
    count = write_labels_zarr(labels, tmp_path / "big_masks.zarr", client=client)
    stitched = np.asarray(zarr.open_array(str(tmp_path / "big_masks.zarr"), mode="r")[:])
    assert stitched.shape == image.shape and stitched.dtype == np.int32
    n_single = len(np.unique(single)) - 1
    assert n_single == truth.max() == 150 and count == n_single
    # Globally unique and seam-free: every label is one piece, every piece one label.
    components, n_components = ndi.label(stitched > 0)
    assert n_components == count
    for piece in ndi.find_objects(components):
        assert len(np.unique(stitched[piece][components[piece] > 0])) == 1
    match = match_labels(single, stitched)
    assert match.tp50 == count and match.fp50 == 0 and match.fn50 == 0
    crossing = _border_crossers(single, BLOCK)
    assert len(crossing) >= 20
    pairs = dict(zip(match.matched_pairs[:, 0].tolist(), match.matched_iou.tolist()))
    assert all(pairs[t] > 0.95 for t in crossing)


def region_threshold(image: np.ndarray) -> np.ndarray:
    """A fake segmenter whose output depends on the region it sees: threshold at mean + 1 std.

    Neighbouring tiles then cut the same nucleus slightly differently, so duplicates, ownership
    and the tolerance margin all matter (with the classical model the copies agree exactly).
    """
    smooth = ndi.gaussian_filter(image.astype(np.float32), 2)
    return ndi.label(smooth > smooth.mean() + smooth.std())[0]


def test_stitching_with_tiles_that_disagree(client) -> None:
    image, truth = disk_mosaic()
    image = np.clip(image + np.linspace(0, 60, image.shape[1])[None, :], 0, 255).astype(np.uint8)
    stitched = segment_dask(image, region_threshold, block=BLOCK, client=client).compute()
    ids = np.unique(stitched)[1:]
    components, n_components = ndi.label(stitched > 0)
    assert len(ids) == n_components == truth.max()  # nothing lost, nothing counted twice
    for piece in ndi.find_objects(components):  # no nucleus made of pieces from two tiles
        assert len(np.unique(stitched[piece][components[piece] > 0])) == 1
    match = match_labels(truth, stitched)
    assert match.tp50 == truth.max() and match.fp50 == 0


def test_callable_model_with_settings_but_no_diameter(client) -> None:
    # The diameter is estimated from the callable's labels; settings without one used to end
    # in an UnboundLocalError / AttributeError (no segmenter to ask for the tiles' scale).
    image, truth = disk_mosaic()
    plain = segment_dask(image, region_threshold, block=BLOCK, client=client).compute()
    with_settings = segment_dask(image, region_threshold, block=BLOCK, infer=InferConfig(), client=client).compute()
    np.testing.assert_array_equal(with_settings, plain)
    assert len(np.unique(plain)) - 1 == truth.max()  # ids are per tile, not 1..n


def test_duplicates_from_two_tiles_are_merged_and_ids_are_per_tile() -> None:
    # Tile 0 (left) and tile 1 (right) both kept the same nucleus, slightly differently.
    a = np.zeros((20, 30), np.int32)
    a[5:15, 16:26] = 1
    b = np.zeros((20, 30), np.int32)
    b[5:15, 2:13] = 1  # global x 16..27 (tile 1's extended region starts at x=14)
    b[0:3, 20:25] = 2  # another nucleus of tile 1
    parts = [(0, (0, 20, 0, 30), a), (1, (0, 20, 14, 44), b)]
    left = assemble((0, 20, 0, 24), parts, cap=1000)
    right = assemble((0, 20, 24, 44), parts, cap=1000)
    whole = np.concatenate([left, right], axis=1)
    assert set(np.unique(whole)) == {0, 1001, 1002}  # the larger copy (tile 1's) survives whole
    assert (whole == 1001).sum() == 110 and whole[5:15, 16:27].min() == 1001


def test_blockwise_batch_writes_zarr_and_resumes(client, tmp_path: Path) -> None:
    image, _ = disk_mosaic(shape=(700, 600), n=40, block=256, seed=1)
    src = tmp_path / "in"
    src.mkdir()
    tifffile.imwrite(src / "big.tif", image, tile=(128, 128))
    (src / "bad.tif").write_bytes(b"II*\x00 truncated")
    items = discover_inputs([src])
    out = tmp_path / "out"
    summary = segment_items_blockwise(items, out, "classical", client=client, block=256, progress=False)
    assert [r["id"] for r in summary.images] == ["big"] and summary.images[0]["count"] == 40
    assert summary.failures[0]["id"] == "bad" and "bad.tif" in summary.failures[0]["error"]
    assert zarr.open_array(str(out / "big_masks.zarr"), mode="r").shape == (700, 600)
    sidecar = json.loads((out / "run.json").read_text())
    assert sidecar["images"][0]["blocks"]["block"] == 256 and sidecar["images"][0]["blocks"]["overlap"] >= 64
    again = segment_items_blockwise(items, out, "classical", client=client, block=256, resume=True, progress=False)
    assert again.skipped == ["big"] and again.images == summary.images and again.failures[0]["id"] == "bad"
    assert json.loads((out / "run.json").read_text())["skipped"] == ["big"]


def test_bad_overlap_is_refused(client) -> None:
    with pytest.raises(ValueError, match="half the block"):
        segment_dask(np.zeros((300, 300), np.uint8), "classical", block=256, overlap=200, client=client)


def test_zarr_input_without_a_cluster(tmp_path: Path) -> None:
    image, truth = disk_mosaic(shape=(700, 600), n=40, block=256, seed=2)
    z = zarr.open_array(str(tmp_path / "img.zarr"), mode="w", shape=image.shape, chunks=(100, 100), dtype=image.dtype)
    z[:] = image
    labels = segment_dask(tmp_path / "img.zarr", "classical", block=256)  # Dask's threaded scheduler
    assert labels.chunks[0][:2] == (256, 256)
    count = write_labels_zarr(labels, tmp_path / "img_masks.zarr")
    stitched = np.asarray(zarr.open_array(str(tmp_path / "img_masks.zarr"), mode="r")[:])
    assert count == truth.max() and match_labels(truth, stitched).tp50 == truth.max()
    assert write_labels_zarr(da.zeros(image.shape, np.int32, chunks=256), tmp_path / "img_masks.zarr") == 0
    assert not zarr.open_array(str(tmp_path / "img_masks.zarr"), mode="r")[:].any()  # replaced whole
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left
