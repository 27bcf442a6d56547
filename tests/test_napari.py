"""The napari plugin: manifest, widget function (no Qt), reader/writer, sample data, and a real
viewer under a virtual X display (CI runs the suite under ``xvfb-run``; without a display the
viewer test is skipped, without the ``nucleiseg[napari]`` extra the whole module is)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

npe2 = pytest.importorskip("npe2")
pytest.importorskip("napari")

from nucleiseg.inference.segmenter import Segmenter  # noqa: E402
from nucleiseg.io import read_image  # noqa: E402
from nucleiseg.napari._core import layer_axes, model_names, segment_layer_data  # noqa: E402
from nucleiseg.napari._io import get_reader, write_labels  # noqa: E402
from nucleiseg.napari._sample import fluo_small  # noqa: E402

from conftest import REPO, disk_labels  # noqa: E402

MANIFEST = REPO / "src" / "nucleiseg" / "napari" / "napari.yaml"
# napari 0.9 with pydantic 2.12+ warns about its own models on import; not ours to fix.
NAPARI_PYDANTIC = "ignore:`json_encoders` is deprecated:DeprecationWarning"
# napari's theme code asks for Qt6 to follow the desktop theme; the extra installs PyQt5.
NAPARI_QT5_THEME = "ignore:System theme detection requires a Qt6 backend:UserWarning"


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
    labels, meta, kind = segment_layer_data(image, rgb=image.ndim == 3, model="classical", name="fluo")
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
    labels, meta, _ = segment_layer_data(stack, model="classical", diameter=16)
    assert labels.shape == stack.shape
    assert [len(np.unique(p)) - 1 for p in labels] == [2, 2, 2]
    assert len(np.unique(labels)) - 1 == 6  # ids are unique over the planes, so features map onto them
    features = meta["features"]
    assert list(features["index"]) == sorted(np.unique(labels)[1:]) and list(features["plane"]) == [0, 0, 1, 1, 2, 2]
    two_channel = np.stack([np.zeros_like(stack[0]), stack[0]])
    one, meta, _ = segment_layer_data(two_channel, model="classical", channel=1)
    assert one.shape == stack.shape[1:] and meta["metadata"]["nucleiseg"]["channel"] == 1
    assert layer_axes((5, 3, 10, 10), False, 1) == "CZYX" and layer_axes((4, 10, 10, 3), True, None) == "ZYXS"
    with pytest.raises(ValueError, match="no channel dimension"):
        layer_axes((10, 10), False, 0)
    assert model_names()[-1] == "classical" and "default" in model_names()


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


@pytest.mark.filterwarnings(NAPARI_PYDANTIC, NAPARI_QT5_THEME)
@pytest.mark.skipif(not os.environ.get("DISPLAY"), reason="needs an X display: run the tests under xvfb-run (.ci/run does)")
def test_viewer_widget_adds_labels_with_features(tmp_path: Path) -> None:
    import napari
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(show=True)
    try:
        viewer.open_sample("nucleiseg", "fluo_small")
        _, widget = viewer.window.add_plugin_dock_widget("nucleiseg", "Segment nuclei")
        widget.model.value = "classical"
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
        np.testing.assert_array_equal(layer.data, Segmenter.from_pretrained("classical").segment(image).labels)
        assert len(layer.features) == int(layer.data.max()) and "area" in layer.features.columns
        shot = viewer.screenshot(str(tmp_path / "shot.png"), canvas_only=False)
        assert shot.ndim == 3 and shot.shape[0] > 200 and shot[..., :3].std() > 5
    finally:
        viewer.close()
        QApplication.processEvents()
