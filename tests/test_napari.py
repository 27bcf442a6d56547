"""The napari plugin: manifest, widget function (no Qt), reader/writer, sample data, and a real
viewer under a virtual X display (CI runs the suite under ``xvfb-run``; without a display the
viewer test is skipped, without the ``nucleiseg[napari]`` extra the whole module is).

The viewer runs on Qt 6 (PyQt6) when it is installed: qtpy would pick PyQt5 first where both are.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path

import importlib.util

import numpy as np
import pytest
import tifffile

if importlib.util.find_spec("PyQt6") is not None:
    os.environ.setdefault("QT_API", "pyqt6")

npe2 = pytest.importorskip("npe2")
pytest.importorskip("napari")

from nucleiseg.inference.segmenter import Segmenter  # noqa: E402
from nucleiseg.io import read_image  # noqa: E402
from nucleiseg.napari._core import (  # noqa: E402
    LayerSettings, diameter_pixels, find_runs, layer_axes, model_choices, model_names, runs_dir, segment_layer_data,
)
from nucleiseg.napari._io import get_reader, write_labels  # noqa: E402
from nucleiseg.napari._sample import fluo_small  # noqa: E402

from conftest import REPO, disk_labels  # noqa: E402

MANIFEST = REPO / "src" / "nucleiseg" / "napari" / "napari.yaml"
# napari 0.9 with pydantic 2.12+ warns about its own models on import; not ours to fix.
NAPARI_PYDANTIC = "ignore:`json_encoders` is deprecated:DeprecationWarning"


@pytest.fixture(scope="module")
def classical() -> Segmenter:
    return Segmenter.from_pretrained("classical")


@pytest.mark.filterwarnings(NAPARI_PYDANTIC)
def test_manifest_validates_and_imports() -> None:
    from npe2 import PluginManifest

    manifest = PluginManifest.from_file(MANIFEST)
    manifest.validate_imports()  # every python_name resolves (imports napari and magicgui)
    installed = PluginManifest.from_distribution("nucleiseg")
    assert installed.name == "nucleiseg" and "Segment nuclei" in [w.display_name for w in installed.contributions.widgets]
    assert [w.display_name for w in manifest.contributions.widgets] == ["Segment nuclei", "Train on these corrections"]
    assert {s.key for s in installed.contributions.sample_data} == {"fluo_small", "tissue_he", "brightfield"}


def test_widget_function_on_a_real_image(classical: Segmenter) -> None:
    image = read_image(REPO / "examples" / "fluo_small.png")
    labels, meta, kind = segment_layer_data(image, image.ndim == 3, LayerSettings(model="classical"), name="fluo")
    assert kind == "labels" and meta["name"] == "fluo nuclei"
    np.testing.assert_array_equal(labels, classical.segment(image).labels)
    features = meta["features"]
    assert list(features["index"]) == list(features["label"]) == list(range(1, int(labels.max()) + 1))
    assert {"area", "centroid_y", "mean_intensity"} <= set(features.columns) and "plane" not in features.columns
    assert features.set_index("index")["area"].to_dict() == {k: float((labels == k).sum()) for k in range(1, int(labels.max()) + 1)}
    assert meta["metadata"]["nucleiseg"]["model"] == "classical"


def test_widget_function_on_a_stack_and_a_channel() -> None:
    truth = np.stack([disk_labels((64, 80), [(20, 20 + 3 * z), (45, 55)], 8) for z in range(3)])
    stack = np.where(truth > 0, 3000, 100).astype(np.uint16)
    labels, meta, _ = segment_layer_data(stack, settings=LayerSettings(model="classical", diameter=16))
    assert labels.shape == stack.shape
    assert [len(np.unique(p)) - 1 for p in labels] == [2, 2, 2]
    assert len(np.unique(labels)) - 1 == 6  # ids are unique over the planes, so features map onto them
    features = meta["features"]
    assert list(features["index"]) == sorted(np.unique(labels)[1:]) and list(features["plane"]) == [0, 0, 1, 1, 2, 2]
    two_channel = np.stack([np.zeros_like(stack[0]), stack[0]])
    one, meta, _ = segment_layer_data(two_channel, settings=LayerSettings(model="classical", channel=1))
    assert one.shape == stack.shape[1:] and meta["metadata"]["nucleiseg"]["channel"] == 1
    assert layer_axes((5, 3, 10, 10), False, 1) == "CZYX" and layer_axes((4, 10, 10, 3), True, None) == "ZYXS"
    with pytest.raises(ValueError, match="no channel dimension"):
        layer_axes((10, 10), False, 0)
    assert model_names()[-1] == "classical" and "default" in model_names()


def test_settings_reach_the_segmenter(classical: Segmenter) -> None:
    image = read_image(REPO / "examples" / "fluo_small.png")
    base, _, _ = segment_layer_data(image, image.ndim == 3, settings=LayerSettings(model="classical"))
    big_only, meta, _ = segment_layer_data(image, image.ndim == 3, settings=LayerSettings(model="classical", min_size=150, pixel_size=0.5))
    post = replace(classical.config.postprocess, min_size=150)
    np.testing.assert_array_equal(big_only, classical.segment(image, post=post).labels)
    assert 0 < big_only.max() < base.max()
    record = meta["metadata"]["nucleiseg"]
    assert record["min_size"] == 150 and record["pixel_size"] == 0.5 and record["threshold"] == classical.config.postprocess.threshold
    assert diameter_pixels(None) is None and diameter_pixels(12.0) == 12.0 and diameter_pixels(6.0, "µm", 0.25) == 24.0
    with pytest.raises(ValueError, match="needs the pixel size"):
        diameter_pixels(6.0, "µm", None)


def test_runs_folder_and_model_choices(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from nucleiseg.bundle import WEIGHTS_DIR

    monkeypatch.delenv("NUCLEISEG_RUNS", raising=False)
    assert runs_dir() == Path.home() / ".nucleiseg" / "runs"
    monkeypatch.setenv("NUCLEISEG_RUNS", str(tmp_path))
    assert runs_dir() == tmp_path and find_runs() == []
    (tmp_path / "group").mkdir()
    (tmp_path / "group" / "mine").symlink_to(WEIGHTS_DIR / "default", target_is_directory=True)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{}")  # no weights: not a model
    assert find_runs() == [tmp_path / "group" / "mine"]
    choices = model_choices(extra=("/elsewhere/picked",))
    assert choices[0] == ("accurate", "accurate") and choices[-1] == ("classical (no network)", "classical")
    assert ("group/mine (run)", str(tmp_path / "group" / "mine")) in choices and ("picked (folder)", "/elsewhere/picked") in choices


def test_reader_and_writer_round_trip(tmp_path: Path) -> None:
    flat = disk_labels((40, 50), [(10, 10), (30, 35)], 6)
    stack = np.stack([flat, flat[::-1], np.zeros_like(flat)])
    assert write_labels(str(tmp_path / "a_masks.tif"), flat, {}) == [str(tmp_path / "a_masks.tif")]
    write_labels(str(tmp_path / "b_masks.tif"), stack, {})
    with tifffile.TiffFile(tmp_path / "b_masks.tif") as tif:
        assert tif.series[0].axes == "ZYX"
    assert get_reader(str(tmp_path / "image.tif")) is None
    reader = get_reader([str(tmp_path / "a_masks.tif"), str(tmp_path / "b_masks.tif")])
    (a, meta_a, kind_a), (b, _, _) = reader([str(tmp_path / "a_masks.tif"), str(tmp_path / "b_masks.tif")])
    assert kind_a == "labels" and meta_a["name"] == "a nuclei"
    np.testing.assert_array_equal(a, flat)
    np.testing.assert_array_equal(b, stack)


def test_sample_data() -> None:
    [(image, meta, kind)] = fluo_small()
    assert kind == "image" and meta["name"] == "fluo_small"
    np.testing.assert_array_equal(image, read_image(REPO / "examples" / "fluo_small.png"))


@pytest.mark.filterwarnings(NAPARI_PYDANTIC)
@pytest.mark.skipif(not os.environ.get("DISPLAY"), reason="needs an X display: run the tests under xvfb-run (.ci/run does)")
def test_viewer_widget_adds_labels_with_features(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import napari
    import qtpy
    from qtpy.QtWidgets import QApplication

    from nucleiseg.bundle import WEIGHTS_DIR

    if importlib.util.find_spec("PyQt6") is not None:
        assert qtpy.API_NAME == "PyQt6"
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "mine").symlink_to(WEIGHTS_DIR / "default", target_is_directory=True)
    monkeypatch.setenv("NUCLEISEG_RUNS", str(tmp_path / "runs"))
    viewer = napari.Viewer(show=True)
    try:
        viewer.open_sample("nucleiseg", "fluo_small")
        viewer.layers["fluo_small"].scale = (0.5, 0.5)
        _, widget = viewer.window.add_plugin_dock_widget("nucleiseg", "Segment nuclei")
        widget.reset_choices()
        assert str(tmp_path / "runs" / "mine") in widget.model.choices
        before = list(widget.model.choices)
        widget.model_folder.value = tmp_path  # not a model folder: a warning, the list stays
        assert list(widget.model.choices) == before and widget.model.value == "default"
        widget.model_folder.value = WEIGHTS_DIR / "accurate"  # a picked folder joins the list and is chosen
        assert widget.model.value == str(WEIGHTS_DIR / "accurate")
        widget.model.value = "classical"
        assert widget.min_size.value is None and widget.min_size._number.value == 10  # the model's, shown greyed
        widget.min_size.value = 150
        widget.image.value = viewer.layers["fluo_small"]
        worker = widget()
        deadline = time.monotonic() + 120
        while len(viewer.layers) < 2 and time.monotonic() < deadline:
            QApplication.processEvents()
            time.sleep(0.02)
        assert worker is not None and len(viewer.layers) == 2, "the worker added no layer in 120 s"
        layer = viewer.layers["fluo_small nuclei"]
        assert isinstance(layer, napari.layers.Labels)
        image = read_image(REPO / "examples" / "fluo_small.png")
        classical = Segmenter.from_pretrained("classical")
        post = replace(classical.config.postprocess, min_size=150)
        np.testing.assert_array_equal(layer.data, classical.segment(image, post=post).labels)
        assert len(layer.features) == int(layer.data.max()) and "area" in layer.features.columns
        assert tuple(layer.scale) == (0.5, 0.5)
        record = layer.metadata["nucleiseg"]
        assert record["min_size"] == 150 and record["pixel_size"] == 0.5 and record["diameter"] is None
        shot = viewer.screenshot(str(tmp_path / "shot.png"), canvas_only=False)
        assert shot.ndim == 3 and shot.shape[0] > 200 and shot[..., :3].std() > 5
    finally:
        viewer.close()
        QApplication.processEvents()
