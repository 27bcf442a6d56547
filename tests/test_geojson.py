"""QuPath GeoJSON: polygons rasterise back onto the labels; measurements equal the CSV's."""

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
from skimage.draw import polygon as fill_polygon

from nucleiseg.cli.main import main
from nucleiseg.io.geojson import nucleus_polygons, to_feature_collection, write_geojson
from nucleiseg.io.measure import measure

from conftest import REPO

EXAMPLE = REPO / "examples" / "fluo_wide.png"


def _rasterise(geometry: dict, shape: tuple[int, int]) -> np.ndarray:
    """Pixels whose centres lie inside the geometry (pixel-corner (x, y) coordinates)."""
    mask = np.zeros(shape, bool)
    polygons = [geometry["coordinates"]] if geometry["type"] == "Polygon" else geometry["coordinates"]
    for rings in polygons:
        ring = np.asarray(rings[0])
        rr, cc = fill_polygon(ring[:, 1] - 0.5, ring[:, 0] - 0.5, shape)
        mask[rr, cc] = True
    return mask


@pytest.fixture(scope="module")
def segmented(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("geojson")
    assert main(["segment", str(EXAMPLE), "-o", str(out), "--geojson", "--measure", "--quiet"]) == 0
    return out


def test_round_trip_on_a_real_image(segmented: Path) -> None:
    labels = tifffile.imread(segmented / "fluo_wide_masks.tif")
    collection = json.loads((segmented / "fluo_wide.geojson").read_text())
    assert collection["type"] == "FeatureCollection"
    features = collection["features"]
    ids = np.unique(labels)[1:]
    assert len(features) == len(ids) > 20
    ious = []
    for feature in features:
        props = feature["properties"]
        assert props["objectType"] == "detection"
        label = int(props["name"])
        truth = labels == label
        drawn = _rasterise(feature["geometry"], labels.shape)
        ious.append((truth & drawn).sum() / (truth | drawn).sum())
    assert min(ious) >= 0.95, f"worst nucleus IoU {min(ious):.3f}"


def test_measurements_equal_the_csv(segmented: Path) -> None:
    table = pd.read_csv(segmented / "fluo_wide_measurements.csv")
    features = json.loads((segmented / "fluo_wide.geojson").read_text())["features"]
    from_json = pd.DataFrame([f["properties"]["measurements"] for f in features])
    assert list(from_json.columns) == list(table.columns)
    from_json = from_json.sort_values("label").reset_index(drop=True)
    table = table.sort_values("label").reset_index(drop=True)
    pd.testing.assert_frame_equal(from_json, table, check_dtype=False, rtol=1e-12)


def test_split_nucleus_is_a_multipolygon_and_holes_are_filled(tmp_path: Path) -> None:
    labels = np.zeros((40, 50), np.int32)
    labels[5:15, 5:15] = 1
    labels[25:35, 30:45] = 1  # second piece of nucleus 1
    labels[20:30, 5:15] = 2
    labels[23:26, 8:11] = 0  # a hole
    (one, polys1), (two, polys2) = list(nucleus_polygons(labels))
    assert (one, len(polys1), two, len(polys2)) == (1, 2, 2, 1)
    collection = to_feature_collection(labels, measure(labels))
    geom = {int(f["properties"]["name"]): f["geometry"] for f in collection["features"]}
    assert geom[1]["type"] == "MultiPolygon" and geom[2]["type"] == "Polygon"
    np.testing.assert_array_equal(_rasterise(geom[1], labels.shape), labels == 1)
    filled = labels == 2
    filled[23:26, 8:11] = True
    np.testing.assert_array_equal(_rasterise(geom[2], labels.shape), filled)
    ring = np.asarray(geom[2]["coordinates"][0])
    assert np.array_equal(ring[0], ring[-1])
    assert ring[:, 0].min() == pytest.approx(5.0, abs=0.5) and ring[:, 0].max() == pytest.approx(15.0, abs=0.5)
    assert write_geojson(tmp_path / "x.geojson", labels) == 2
    with pytest.raises(ValueError, match="need a 'plane' column"):
        write_geojson(tmp_path / "y.geojson", labels[None], measure(labels))


def test_web_app_zip_holds_the_geojson() -> None:
    pytest.importorskip("fastapi")
    with warnings.catch_warnings():  # Starlette asks for the httpx2 fork; plain httpx still works
        warnings.filterwarnings("ignore", message=".*httpx2.*")
        from fastapi.testclient import TestClient
    from nucleiseg.app.server import create_app

    image = REPO / "examples" / "fluo_small.png"
    with TestClient(create_app("classical")) as client:
        r = client.post("/api/segment?format=zip", files={"file": ("fluo_small.png", image.read_bytes(), "image/png")})
    assert r.status_code == 200, r.text
    archive = zipfile.ZipFile(io.BytesIO(r.content))
    features = json.loads(archive.read("fluo_small.geojson"))["features"]
    table = pd.read_csv(io.BytesIO(archive.read("fluo_small_measurements.csv")))
    assert len(features) == len(table) > 0
    assert sorted(int(f["properties"]["name"]) for f in features) == sorted(table["label"])
