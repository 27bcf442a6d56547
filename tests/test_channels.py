"""Channel ambiguity: only interleaved RGB(A) is read as colour; planes stored one after another are refused
with one line asking for --channel / --axes (CLI exit code, web API 422, Python ValueError)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from scipy import ndimage as ndi

from nucleiseg.cli.main import main
from nucleiseg.io.images import ImageReadError, read_image
from nucleiseg.io.stacks import read_planes, resolve_planes

from conftest import DSB_ROOT, REAL_IDS

FLUO_ID = REAL_IDS[0]


def _cyx() -> np.ndarray:
    """(actin, brightfield, DAPI) planes: the DAPI plane is a real DSB image, the others are not nuclei."""
    dapi = read_image(DSB_ROOT / FLUO_ID / "images" / f"{FLUO_ID}.png")[..., 0]
    rng = np.random.default_rng(0)
    actin = ndi.gaussian_filter(rng.random(dapi.shape), 6)
    actin = (255 * (actin - actin.min()) / np.ptp(actin)).astype(np.uint8)
    brightfield = (200 - dapi // 4 + rng.integers(0, 20, dapi.shape)).astype(np.uint8)
    return np.ascontiguousarray(np.stack([actin, brightfield, dapi]))


def _planar(path: Path, data: np.ndarray) -> Path:
    """What ``tifffile.imwrite(path, cyx)`` writes without options: planar RGB, no axis metadata."""
    tifffile.imwrite(path, data, photometric="rgb", planarconfig="separate", metadata=None)
    return path


def test_planar_three_plane_tiff_is_refused_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _planar(tmp_path / "cyx.tif", _cyx())
    out = tmp_path / "out"
    assert main(["segment", str(path), "-o", str(out), "--model", "classical", "--quiet"]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith(f"error: {path}: 3 planes stored one after another")
    assert "--channel" in err[0] and "--axes SYX" in err[0]
    assert json.loads((out / "run.json").read_text())["failures"][0]["file"] == str(path)


def test_planar_tiff_with_channel_finds_the_nuclei(tmp_path: Path) -> None:
    data = _cyx()
    path = _planar(tmp_path / "cyx.tif", data)
    gray = tmp_path / "dapi.tif"
    tifffile.imwrite(gray, data[2])
    out = tmp_path / "out"
    assert main(["segment", str(path), "-o", str(out), "--channel", "2", "--model", "classical", "--quiet"]) == 0
    assert main(["segment", str(gray), "-o", str(out), "--model", "classical", "--quiet"]) == 0
    assert json.loads((out / "run.json").read_text())["images"][0]["count"] > 10
    np.testing.assert_array_equal(tifffile.imread(out / "cyx_masks.tif"), tifffile.imread(out / "dapi_masks.tif"))


@pytest.mark.parametrize(
    ("kwargs", "phrase"),
    [
        ({"imagej": True, "metadata": {"axes": "CYX"}}, "3 channels: ambiguous; pick the nuclear one with --channel 0..2"),
        ({"ome": True, "metadata": {"axes": "CYX", "Channel": {"Name": ["Actin", "BF", "DAPI"]}}}, "3 channels (Actin, BF, DAPI)"),
        ({"photometric": "minisblack"}, "ambiguous axes"),  # three pages without metadata
    ],
)
def test_other_channel_first_layouts_are_refused(tmp_path: Path, kwargs: dict, phrase: str) -> None:
    path = tmp_path / "c.tif"
    tifffile.imwrite(path, _cyx(), **kwargs)
    with pytest.raises(ImageReadError) as err:
        read_planes(path)
    assert "\n" not in str(err.value) and str(err.value).startswith(f"{path}: ") and phrase in str(err.value)
    assert "--channel" in str(err.value)


def test_interleaved_rgb_stays_colour_and_axes_s_reads_planar_as_colour(tmp_path: Path) -> None:
    data = _cyx()
    rgb = np.ascontiguousarray(np.moveaxis(data, 0, -1))
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    np.testing.assert_array_equal(read_planes(tmp_path / "rgb.tif").image, rgb)
    planar = _planar(tmp_path / "planar.tif", data)
    np.testing.assert_array_equal(read_planes(planar, axes="SYX").image, rgb)
    np.testing.assert_array_equal(read_planes(planar, channel=2).image, data[2])
    assert read_planes(planar, channel=2).channel == 2
    two = np.zeros((2, 20, 30), np.uint8)
    with pytest.raises(ValueError, match=r"^2 channels: ambiguous; pick the nuclear one with --channel 0..1"):
        resolve_planes(two, "CYX")


def test_web_api_refuses_the_planar_tiff(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from nucleiseg.app.server import create_app

    content = _planar(tmp_path / "cyx.tif", _cyx()).read_bytes()
    with TestClient(create_app("classical")) as client:
        r = client.post("/api/segment", files={"file": ("cells.tif", content, "image/tiff")})
        assert r.status_code == 422
        message = r.json()["error"]
        assert message.startswith("file 'cells': 3 planes stored one after another") and "--channel" in message
        assert str(tmp_path) not in message
        ok = client.post("/api/segment", files={"file": ("cells.tif", content, "image/tiff")}, data={"channel": "2"})
        assert ok.status_code == 200 and ok.json()["count"] > 10


def test_python_api_refuses_channel_first_arrays() -> None:
    import nucleiseg

    with pytest.raises(ValueError, match="3 channels: ambiguous"):
        nucleiseg.segment(_cyx(), model="classical", axes="CYX")
    assert nucleiseg.segment(_cyx(), model="classical", axes="CYX", channel=2).max() > 10
