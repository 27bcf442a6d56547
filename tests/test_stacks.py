"""Multi-channel images and time/z stacks: OME and ImageJ metadata, plain arrays, --channel/--axes."""

from __future__ import annotations

import io
import json
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

import nucleiseg
from nucleiseg.cli.main import main
from nucleiseg.inference.batch import OutputOptions, segment_items
from nucleiseg.inference.segmenter import Segmenter
from nucleiseg.io import read_image
from nucleiseg.io.images import ImageReadError
from nucleiseg.io.labels import discover_inputs
from nucleiseg.io.stacks import parse_channel, read_planes, resolve_planes
from nucleiseg.metrics import match_labels

from conftest import REPO, disk_labels

SHAPE = (96, 112)
CENTERS = [(20, 20), (20, 70), (50, 45), (75, 20), (75, 88), (45, 95)]


def _truth(shift: int = 0) -> np.ndarray:
    return disk_labels(SHAPE, [(y, x + shift) for y, x in CENTERS], 7)


def _nuclear(shift: int = 0) -> np.ndarray:
    return np.where(_truth(shift) > 0, 3000, 200).astype(np.uint16)


def _three_channels(rng: np.random.Generator) -> np.ndarray:
    """(3, H, W): noise, a flat membrane-like channel, nuclei in channel 2."""
    noise = rng.integers(0, 4000, SHAPE).astype(np.uint16)
    flat = np.full(SHAPE, 900, np.uint16)
    flat[::7] = 4000
    return np.stack([noise, flat, _nuclear()])


@pytest.fixture(scope="module")
def classical() -> Segmenter:
    return Segmenter.from_pretrained("classical")


def _assert_found(labels: np.ndarray, truth: np.ndarray) -> None:
    m = match_labels(truth, labels)
    assert m.n_pred == m.n_true == len(CENTERS)
    assert m.ap50 == 1.0


# ------------------------------------------------------------------ reading


def test_ome_channel_by_name_and_index(tmp_path: Path) -> None:
    data = _three_channels(np.random.default_rng(0))
    path = tmp_path / "cells.ome.tif"
    tifffile.imwrite(path, data, ome=True, metadata={"axes": "CYX", "Channel": {"Name": ["GFP", "Actin", "DAPI"]}})
    by_name = read_planes(path, channel="dapi")
    assert not by_name.is_stack and by_name.channel == 2 and by_name.channel_name == "DAPI"
    np.testing.assert_array_equal(by_name.image, data[2])
    np.testing.assert_array_equal(read_planes(path, channel=0).image, data[0])
    with pytest.raises(ImageReadError, match=r"cells.ome.tif: no channel named 'hoechst' \(channel names: GFP, Actin, DAPI\)"):
        read_planes(path, channel="hoechst")
    with pytest.raises(ImageReadError, match=r"channel 3 out of range: the image has 3 channels \(0..2\)"):
        read_planes(path, channel=3)


def test_imagej_hyperstack_channel_names_and_z(tmp_path: Path) -> None:
    zcyx = np.stack([np.stack([np.zeros(SHAPE, np.uint16), _nuclear(2 * z)]) for z in range(4)])
    path = tmp_path / "hyper.tif"
    tifffile.imwrite(path, zcyx, imagej=True, metadata={"axes": "ZCYX", "Labels": ["Actin", "Hoechst"] * 4})
    planes = read_planes(path, channel="hoechst")
    assert planes.stack_axes == "Z" and planes.stack_shape == (4,) and planes.planes.shape == (4, *SHAPE)
    np.testing.assert_array_equal(planes.planes[3], zcyx[3, 1])
    with pytest.raises(ImageReadError, match="no channel named 'dapi'"):
        read_planes(path, channel="dapi")


def test_plain_stack_needs_axes(tmp_path: Path) -> None:
    stack = np.stack([_nuclear(z) for z in range(10)])
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, stack, photometric="minisblack")
    with pytest.raises(ImageReadError) as err:
        read_planes(path)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{path}: ambiguous axes: shape (10, 96, 112)")
    assert "--axes" in message and "ZYX, TYX, CYX" in message
    planes = read_planes(path, axes="tyx")
    assert planes.stack_axes == "T" and planes.planes.shape == (10, *SHAPE)
    with pytest.raises(ImageReadError, match="axes 'ZYX' has 3 letters but the image has 4 dimensions"):
        tifffile.imwrite(tmp_path / "four.tif", np.zeros((2, 3, *SHAPE), np.uint16), photometric="minisblack")
        read_planes(tmp_path / "four.tif", axes="ZYX")


def test_resolve_planes_rules() -> None:
    arr = np.zeros((2, 5, *SHAPE), np.uint16)  # T, C, Y, X
    arr[:, 4] = _nuclear()
    with pytest.raises(ValueError, match=r"5 channels: pick the nuclear one with --channel 0..4$"):
        resolve_planes(arr, "TCYX")
    planes = resolve_planes(arr, "TCYX", channel=4)
    assert planes.stack_axes == "T" and planes.planes.shape == (2, *SHAPE) and planes.channel == 4
    rgb = np.zeros((*SHAPE, 3), np.uint8)
    assert resolve_planes(rgb).planes.shape == (1, *SHAPE, 3)
    rgb[..., 1] = 7
    assert int(resolve_planes(rgb, channel=1).image.max()) == 7
    with pytest.raises(ValueError, match="no channel dimension"):
        resolve_planes(np.zeros((3, *SHAPE)), "ZYX", channel=1)
    with pytest.raises(ValueError, match="must use each of T, Z, C, S, Y, X at most once"):
        resolve_planes(np.zeros((3, *SHAPE)), "ZZX")
    assert parse_channel("2") == 2 and parse_channel(" dapi ") == "dapi" and parse_channel(None) is None


def test_two_d_inputs_read_as_before() -> None:
    for name in ("fluo_small.png", "tissue_he.png"):
        planes = read_planes(REPO / "examples" / name)
        assert not planes.is_stack
        np.testing.assert_array_equal(planes.image, read_image(REPO / "examples" / name))


# ------------------------------------------------------------------ segmenting


def test_cli_three_channel_tiff_channel_two(tmp_path: Path) -> None:
    """The done-criterion: a 3-channel TIFF with nuclei in channel 2 segments with one command."""
    path = tmp_path / "three.tif"
    tifffile.imwrite(path, _three_channels(np.random.default_rng(1)), imagej=True, metadata={"axes": "CYX"})
    out = tmp_path / "out"
    assert main(["segment", str(path), "-o", str(out), "--channel", "2", "--measure", "--quiet"]) == 0
    labels = tifffile.imread(out / "three_masks.tif")
    _assert_found(labels, _truth())
    record = json.loads((out / "run.json").read_text())["images"][0]
    assert record["channel"] == 2 and record["count"] == len(CENTERS)


def test_cli_ten_plane_stack(tmp_path: Path) -> None:
    """The done-criterion: a 10-plane stack segments into a 10-plane label stack with one command."""
    stack = np.stack([_nuclear(z) for z in range(10)])
    path = tmp_path / "zstack.tif"
    tifffile.imwrite(path, stack, photometric="minisblack")
    out = tmp_path / "out"
    args = ["segment", str(path), "-o", str(out), "--axes", "ZYX", "--measure", "--rois", "--overlay", "--geojson", "--quiet"]
    assert main(args) == 0
    with tifffile.TiffFile(out / "zstack_masks.tif") as tif:
        assert tif.is_imagej and tif.series[0].axes == "ZYX"
        labels = tif.asarray()
    assert labels.shape == (10, *SHAPE)
    for z in range(10):
        _assert_found(labels[z], _truth(z))
    table = pd.read_csv(out / "zstack_measurements.csv")
    assert list(table.columns[:2]) == ["plane", "label"]
    assert table.groupby("plane").size().to_dict() == {z: len(CENTERS) for z in range(10)}
    assert np.allclose(table[table["plane"] == 3].sort_values("label")["area"].to_numpy(),
                       np.bincount(labels[3].ravel())[1:])
    assert tifffile.imread(out / "zstack_overlay.tif").shape == (10, *SHAPE, 3)
    import roifile

    rois = roifile.roiread(out / "zstack_rois.zip")
    assert len(rois) == 10 * len(CENTERS) and sorted({r.position for r in rois}) == list(range(1, 11))
    features = json.loads((out / "zstack.geojson").read_text())["features"]
    assert {f["geometry"]["plane"]["z"] for f in features} == set(range(10))
    record = json.loads((out / "run.json").read_text())["images"][0]
    assert record["planes"] == 10 and record["axes"] == "ZYX" and record["count"] == 10 * len(CENTERS)


def test_cli_ambiguous_stack_fails_one_line_and_batch_goes_on(tmp_path: Path, capsys) -> None:
    tifffile.imwrite(tmp_path / "a_stack.tif", np.stack([_nuclear(z) for z in range(7)]), photometric="minisblack")
    tifffile.imwrite(tmp_path / "b_plane.tif", _nuclear())
    code = main(["segment", str(tmp_path), "-o", str(tmp_path / "out"), "--model", "classical", "--quiet"])
    assert code == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "a_stack.tif: ambiguous axes: shape (7, 96, 112)" in err[0] and "ZYX" in err[0]
    assert (tmp_path / "out" / "b_plane_masks.tif").is_file()
    assert not (tmp_path / "out" / "a_stack_masks.tif").exists()


def test_stack_refuses_png_and_rle_per_image(tmp_path: Path, classical: Segmenter) -> None:
    tifffile.imwrite(tmp_path / "s.tif", np.stack([_nuclear(z) for z in range(3)]), metadata={"axes": "TYX"}, photometric="minisblack")
    items = discover_inputs([tmp_path / "s.tif"])
    summary = segment_items(items, tmp_path / "out", classical, OutputOptions(png=True), progress=False)
    assert "cannot be written by --png (2-D only); drop --png" in summary.failures[0]["error"]
    assert summary.failures[0]["error"].startswith(str(tmp_path / "s.tif"))
    summary = segment_items(items, tmp_path / "out2", classical, OutputOptions(measure=True), progress=False)
    assert not summary.failures and summary.images[0]["axes"] == "TYX" and summary.images[0]["planes"] == 3


def test_stack_progress_counts_planes(tmp_path: Path, classical: Segmenter, capsys) -> None:
    """A long stack moves a bar per plane (the batch bar moves once per file); it is cleared when done."""
    tifffile.imwrite(tmp_path / "z.tif", np.stack([_nuclear(z % 4) for z in range(12)]), metadata={"axes": "ZYX"}, photometric="minisblack")
    summary = segment_items(discover_inputs([tmp_path / "z.tif"]), tmp_path / "out", classical, OutputOptions(), progress=True)
    assert not summary.failures and summary.images[0]["planes"] == 12
    err = capsys.readouterr().err
    assert "z planes:" in err and "0/12 [" in err and "plane/s" in err
    summary = segment_items(discover_inputs([tmp_path / "z.tif"]), tmp_path / "quiet", classical, OutputOptions(), progress=False)
    assert "planes" not in capsys.readouterr().err


def test_python_api_channel_and_axes(classical: Segmenter) -> None:
    stack = np.stack([_nuclear(z) for z in range(3)])
    labels = nucleiseg.segment(stack, model="classical", axes="ZYX")
    assert labels.shape == (3, *SHAPE)
    np.testing.assert_array_equal(labels[1], classical.segment(stack[1]).labels)
    tczyx = np.stack([np.zeros(SHAPE, np.uint16), _nuclear()])
    two_d = nucleiseg.segment(tczyx, model="classical", axes="CYX", channel="nuc", channel_names=["mem", "Nuc"])
    np.testing.assert_array_equal(two_d, classical.segment(_nuclear()).labels)
    with pytest.raises(ValueError, match="ambiguous axes"):
        nucleiseg.segment(stack, model="classical")


def test_web_app_channel_and_stack_zip(tmp_path: Path) -> None:
    pytest.importorskip("fastapi")
    with warnings.catch_warnings():  # Starlette asks for the httpx2 fork; plain httpx still works
        warnings.filterwarnings("ignore", message=".*httpx2.*")
        from fastapi.testclient import TestClient

    from nucleiseg.app.server import create_app

    buf = io.BytesIO()
    tifffile.imwrite(buf, _three_channels(np.random.default_rng(2)), ome=True,
                     metadata={"axes": "CYX", "Channel": {"Name": ["GFP", "Actin", "DAPI"]}})
    stack = io.BytesIO()
    tifffile.imwrite(stack, np.stack([_nuclear(z) for z in range(5)]), photometric="minisblack")
    with TestClient(create_app("classical")) as client:
        r = client.post("/api/segment", files={"file": ("c.tif", buf.getvalue(), "image/tiff")}, data={"channel": "DAPI"})
        assert r.status_code == 200, r.text
        assert r.json()["count"] == len(CENTERS) and r.json()["channels"] == 1
        r = client.post("/api/segment", files={"file": ("c.tif", buf.getvalue(), "image/tiff")}, data={"channel": "nope"})
        assert r.status_code == 422 and "no channel named 'nope'" in r.json()["error"]
        r = client.post("/api/segment", files={"file": ("z.tif", stack.getvalue(), "image/tiff")})
        assert r.status_code == 422 and "ambiguous axes" in r.json()["error"] and "\n" not in r.json()["error"]
        r = client.post("/api/segment", files={"file": ("z.tif", stack.getvalue(), "image/tiff")}, data={"axes": "ZYX"})
        assert r.status_code == 422 and "format=zip" in r.json()["error"]
        r = client.post("/api/segment?format=zip", files={"file": ("z.tif", stack.getvalue(), "image/tiff")}, data={"axes": "ZYX"})
        assert r.status_code == 200, r.text
    archive = zipfile.ZipFile(io.BytesIO(r.content))
    assert {"z_masks.tif", "z_measurements.csv", "z.geojson", "z_overlay.tif", "z_rois.zip", "run.json"} <= set(archive.namelist())
    labels = tifffile.imread(io.BytesIO(archive.read("z_masks.tif")))
    assert labels.shape == (5, *SHAPE) and all(len(np.unique(p)) == len(CENTERS) + 1 for p in labels)
    assert json.loads(archive.read("run.json"))["planes"] == 5


def test_resume_knows_geojson_and_stack_overlays(tmp_path: Path) -> None:
    from nucleiseg.distributed.resume import expected_outputs, pending_items
    from nucleiseg.inference.batch import OutputOptions
    from nucleiseg.io.labels import InputItem

    item = InputItem("s", tmp_path / "s.tif", None, None)
    options = OutputOptions(overlay=True, geojson=True)
    assert expected_outputs(item, options) == ["s_masks.tif", "s_overlay.png", "s.geojson"]
    tifffile.imwrite(tmp_path / "s_masks.tif", np.ones((2, 4, 4), np.uint16))
    tifffile.imwrite(tmp_path / "s_overlay.tif", np.ones((2, 4, 4, 3), np.uint8))  # a stack's overlay
    assert pending_items([item], tmp_path, options) == [item]  # the GeoJSON is still missing
    (tmp_path / "s.geojson").write_text("{}")
    assert pending_items([item], tmp_path, options) == []
