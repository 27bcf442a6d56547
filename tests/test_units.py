"""Physical units: pixel size from OME / ImageJ / TIFF resolution metadata or --pixel-size, µm columns
in the CSV and QuPath's µm measurements in the GeoJSON, diameters in µm, and ``--diameter 0`` = estimate."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image

from nucleiseg.cli.main import main
from nucleiseg.io.images import read_image
from nucleiseg.io.stacks import read_planes
from nucleiseg.io.units import Diameter, PixelSize, parse_diameter, parse_pixel_size
from test_app_browser import IMAGE, base_url, browser, page  # noqa: F401 (the browser fixtures)

from conftest import DSB_ROOT, REAL_IDS

FLUO_ID = REAL_IDS[0]  # 256 x 256 fluorescence, ~21 nuclei


def _dsb_gray() -> np.ndarray:
    image = read_image(DSB_ROOT / FLUO_ID / "images" / f"{FLUO_ID}.png")
    return np.ascontiguousarray(image[..., 0])


def _write_ome(path: Path, image: np.ndarray, size_x: float, unit: str = "µm") -> Path:
    meta = {"axes": "YX", "PhysicalSizeX": size_x, "PhysicalSizeY": size_x, "PhysicalSizeXUnit": unit, "PhysicalSizeYUnit": unit}
    tifffile.imwrite(path, image, ome=True, metadata=meta)
    return path


def _segment(*args: str, model: str = "classical") -> int:
    return main(["segment", *args, "--model", model, "--quiet"])


def _record(out: Path) -> dict:
    return json.loads((out / "run.json").read_text())["images"][0]


# ------------------------------------------------------------------ end to end


def test_ome_tiff_pixel_size_reaches_csv_geojson_and_run_record(tmp_path: Path) -> None:
    path = _write_ome(tmp_path / "cells.ome.tif", _dsb_gray(), 0.5)
    out = tmp_path / "out"
    assert _segment(str(path), "-o", str(out), "--measure", "--geojson") == 0
    table = pd.read_csv(out / "cells.ome_measurements.csv")
    assert len(table) > 10
    np.testing.assert_allclose(table["area_um2"], table["area"] * 0.25)
    np.testing.assert_allclose(table["perimeter_um"], table["perimeter"] * 0.5)
    np.testing.assert_allclose(table["centroid_x_um"], table["centroid_x"] * 0.5)
    features = json.loads((out / "cells.ome.geojson").read_text(encoding="utf-8"))["features"]
    by_label = {int(f["properties"]["name"]): f["properties"]["measurements"] for f in features}
    for row in table.itertuples():
        got = by_label[row.label]
        assert got["Nucleus: Area µm^2"] == pytest.approx(row.area * 0.25)
        assert got["Nucleus: Perimeter µm"] == pytest.approx(row.perimeter * 0.5)
        assert got["Centroid Y µm"] == pytest.approx(row.centroid_y * 0.5)
        assert got["area"] == row.area and "area_um2" not in got
    record = _record(out)
    assert record["pixel_size_um"] == 0.5 and record["pixel_size_source"] == "metadata"
    assert record["pixel_size_metadata"] == "OME"
    assert read_planes(out / "cells.ome_masks.tif").pixel_size.um == pytest.approx(0.5)  # the masks are calibrated
    from nucleiseg.napari._io import read_masks

    assert read_masks(str(out / "cells.ome_masks.tif"))[0][1]["metadata"]["nucleiseg"]["pixel_size_um"] == pytest.approx(0.5)


def test_pixel_size_option_overrides_the_metadata(tmp_path: Path) -> None:
    path = _write_ome(tmp_path / "cells.tif", _dsb_gray(), 650, unit="nm")
    out = tmp_path / "out"
    assert _segment(str(path), "-o", str(out), "--measure", "--pixel-size", "0.25") == 0
    table = pd.read_csv(out / "cells_measurements.csv")
    np.testing.assert_allclose(table["area_um2"], table["area"] * 0.0625)
    record = _record(out)
    assert record["pixel_size_um"] == 0.25 and record["pixel_size_source"] == "option"
    assert read_planes(path).pixel_size == PixelSize(0.65, "metadata", "OME")  # nm converted


def test_png_without_pixel_size_keeps_pixel_columns_only(tmp_path: Path) -> None:
    path = tmp_path / "plain.png"
    Image.fromarray(_dsb_gray()).save(path)
    out = tmp_path / "out"
    assert _segment(str(path), "-o", str(out), "--measure", "--geojson") == 0
    table = pd.read_csv(out / "plain_measurements.csv")
    assert not any(c.endswith(("_um", "_um2")) for c in table.columns)
    record = _record(out)
    assert record["pixel_size_um"] is None and record["pixel_size_source"] == "none"
    out2 = tmp_path / "out2"
    assert _segment(str(path), "-o", str(out2), "--measure", "--pixel-size", "0.5um") == 0
    assert "area_um2" in pd.read_csv(out2 / "plain_measurements.csv").columns


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"imagej": True, "resolution": (2.0, 2.0), "metadata": {"unit": "micron", "spacing": 3.0}}, (0.5, "ImageJ")),
        ({"imagej": True, "resolution": (1 / 0.325, 1 / 0.325), "metadata": {"unit": "um"}}, (0.325, "ImageJ")),
        ({"resolution": (1e4 / 0.8, 1e4 / 0.8), "resolutionunit": "CENTIMETER"}, (0.8, "TIFF resolution")),
        ({"resolution": (25400 / 0.4, 25400 / 0.4), "resolutionunit": "INCH"}, (0.4, "TIFF resolution")),
        ({"resolution": (72, 72), "resolutionunit": "INCH"}, None),  # an editor's 72 dpi, not a microscope's
        ({"resolution": (1, 1), "resolutionunit": "NONE"}, None),
        ({"resolution": (1e4 / 0.4, 1e4 / 0.8), "resolutionunit": "CENTIMETER"}, (np.sqrt(0.32), "TIFF resolution")),
    ],
)
def test_imagej_and_resolution_tag_variants(tmp_path: Path, kwargs: dict, expected: tuple | None) -> None:
    path = tmp_path / "v.tif"
    tifffile.imwrite(path, np.zeros((20, 30), np.uint16), **kwargs)
    size = read_planes(path).pixel_size
    if expected is None:
        assert size == PixelSize()
    else:
        assert size.um == pytest.approx(expected[0]) and size.source == "metadata" and size.detail == expected[1]


def test_stack_records_and_measures_in_um(tmp_path: Path) -> None:
    gray = _dsb_gray()
    path = tmp_path / "z.tif"
    tifffile.imwrite(path, np.stack([gray, gray]), imagej=True, resolution=(2.0, 2.0), metadata={"axes": "ZYX", "unit": "um"})
    out = tmp_path / "out"
    assert _segment(str(path), "-o", str(out), "--measure") == 0
    table = pd.read_csv(out / "z_measurements.csv")
    np.testing.assert_allclose(table["area_um2"], table["area"] * 0.25)
    assert _record(out)["pixel_size_um"] == 0.5
    with tifffile.TiffFile(out / "z_masks.tif") as tif:  # ImageJ calibration: Fiji shows µm
        assert tif.imagej_metadata["unit"] == "um" and tif.series[0].axes == "ZYX"
    assert read_planes(out / "z_masks.tif", axes="ZYX").pixel_size.um == pytest.approx(0.5)


# ------------------------------------------------------------------ diameters


def test_parse_diameter() -> None:
    assert parse_diameter("8um", 0.5) == parse_diameter("8 µm", 0.5) == 16.0
    assert parse_diameter("30px") == parse_diameter(30) == parse_diameter("30") == 30.0
    for estimate in (0, "0", "auto", "", None, " AUTO "):
        assert parse_diameter(estimate) is None
    with pytest.raises(ValueError, match="needs the pixel size"):
        parse_diameter("8um")
    for bad in ("-3", "8 furlongs", "eight"):
        with pytest.raises(ValueError, match="diameter"):
            parse_diameter(bad)
    assert str(Diameter.parse("8um")) == "8um" and str(Diameter.parse(0)) == "auto"
    assert parse_pixel_size("650nm") == pytest.approx(0.65)
    with pytest.raises(ValueError, match="pixel size"):
        parse_pixel_size("-1")


def test_diameter_in_um_with_the_file_pixel_size(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gray = _dsb_gray()
    path = _write_ome(tmp_path / "cells.tif", gray, 0.5)
    out = tmp_path / "out"
    assert _segment(str(path), "-o", str(out), "--diameter", "8um", model="default") == 0  # the network honours it
    record = _record(out)
    assert record["diameter"] == 16.0 and record["diameter_source"] == "given"
    png = tmp_path / "plain.png"
    Image.fromarray(gray).save(png)
    capsys.readouterr()
    assert _segment(str(png), "-o", str(tmp_path / "bad"), "--diameter", "8um") == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and str(png) in err[0] and "--pixel-size" in err[0]
    assert _segment(str(png), "-o", str(tmp_path / "opt"), "--diameter", "8um", "--pixel-size", "0.25", model="default") == 0
    assert _record(tmp_path / "opt")["diameter"] == 32.0
    assert main(["segment", str(png), "-o", str(tmp_path / "x"), "--diameter", "big", "--quiet"]) == 2


@pytest.fixture(scope="module")
def enlarged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The DSB image enlarged 3x (nuclei ~50 px): the default model shrinks it when it estimates."""
    path = tmp_path_factory.mktemp("big") / "big.png"
    Image.fromarray(np.kron(_dsb_gray(), np.ones((3, 3), np.uint8))).save(path)
    return path


def test_diameter_zero_estimates_in_cli_and_python(enlarged: Path, tmp_path: Path) -> None:
    import nucleiseg

    records = {}
    for value in ("0", "auto"):
        out = tmp_path / value
        assert main(["segment", str(enlarged), "-o", str(out), "--diameter", value, "--quiet"]) == 0
        records[value] = _record(out)
    for record in records.values():
        assert record["diameter_source"] == "size_model" and record["scale"] < 0.5 and record["diameter"] > 35
    image = read_image(enlarged)
    native = nucleiseg.segment(image, rescale=False)
    estimated = nucleiseg.segment(image, diameter=0)
    np.testing.assert_array_equal(estimated, nucleiseg.segment(image))
    assert not np.array_equal(estimated, native)


def test_web_api_pixel_size_and_diameter_fields(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from nucleiseg.app.server import create_app

    data = io.BytesIO()
    Image.fromarray(_dsb_gray()).save(data, format="PNG")
    files = {"file": ("cells.png", data.getvalue(), "image/png")}
    with TestClient(create_app("classical")) as client:
        plain = client.post("/api/segment", files=files, data={"diameter": "0"})
        assert plain.status_code == 200, plain.text
        assert plain.json()["pixel_size_source"] == "none" and "area_um2" not in plain.json()["measurements"][0]
        given = client.post("/api/segment", files=files, data={"pixel_size": "0.5", "diameter": "8um"})
        assert given.status_code == 200, given.text
        body = given.json()
        assert body["pixel_size_um"] == 0.5 and body["pixel_size_source"] == "option"
        assert body["settings"]["infer"]["diameter"] == 16.0
        row = body["measurements"][0]
        assert row["area_um2"] == pytest.approx(row["area"] * 0.25)
        missing = client.post("/api/segment", files=files, data={"diameter": "8um"})
        assert missing.status_code == 422 and "pixel size" in missing.json()["error"]
        bad = client.post("/api/segment", files=files, data={"diameter": "-2"})
        assert bad.status_code == 422 and "diameter" in bad.json()["error"]


def test_web_page_pixel_size_and_diameter_inputs(page) -> None:  # noqa: F811 (the browser page fixture)
    """The page sends the pixel size and a text diameter, and shows the µm columns and the pixel size."""
    page.wait_for_selector("#server-dot.ok", timeout=10_000)
    page.fill("[data-testid=opt-pixel-size]", "0.5")
    page.fill("[data-testid=opt-diameter]", "auto")
    page.set_input_files("[data-testid=file-input]", str(IMAGE))
    card = page.locator("[data-testid=result-card].done")
    card.wait_for(timeout=60_000)
    assert card.locator("[data-testid=sort-area_um2]").inner_text() == "Area (µm²)"
    assert "0.500 µm" in card.locator(".stats").inner_text()
