"""bioimage.io model package: built from the bundled ONNX weights, validated and run offline."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from nucleiseg.cli.main import main
from nucleiseg.config import ModelBundleConfig, load_json
from nucleiseg.export.bioimageio import model_card_tables, normalised_input
from nucleiseg.bundle import ModelBundle

pytest.importorskip("bioimageio.spec")

# bioimageio.spec/core open the package's files and leave some for the garbage collector; the
# ResourceWarnings that follow are theirs. Ignored here only, and collected in this module
# (see _collect_leaks) so they cannot surface in another test.
pytestmark = pytest.mark.filterwarnings(
    r"ignore:Exception ignored in. <_io.FileIO name=.*mode='rb' closefd=True>:pytest.PytestUnraisableExceptionWarning",
    "ignore:unclosed file <_io.BufferedReader:ResourceWarning",
)


@pytest.fixture(autouse=True)
def _collect_leaks():
    yield
    import gc

    gc.collect()


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bioimageio") / "nucleiseg.zip"
    assert main(["export", "default", "--format", "bioimageio", "-o", str(out)]) == 0
    return out


def test_package_contents(package: Path) -> None:
    with zipfile.ZipFile(package) as zf:
        names = set(zf.namelist())
        rdf = yaml.safe_load(zf.read("rdf.yaml"))
        readme = zf.read("README.md").decode()
    assert {"rdf.yaml", "model.onnx", "test_input.npy", "test_output.npy", "sample_input.png", "sample_output.png",
            "cover.png", "README.md"} <= names
    assert rdf["format_version"].startswith("0.5.")
    pre = rdf["inputs"][0]["preprocessing"]
    scale = next(p for p in pre if p["id"] == "scale_range")["kwargs"]
    assert (scale["min_percentile"], scale["max_percentile"]) == (1.0, 99.8)
    assert scale["axes"] == ["channel", "y", "x"]
    assert next(p for p in pre if p["id"] == "clip")["kwargs"] == {"min": 0.0, "max": 1.0}
    assert "onnx" in rdf["weights"] and rdf["training_data"]["license"] == "CC0-1.0"
    assert any(c.get("doi") == "10.1038/s41592-019-0612-7" for c in rdf["cite"])
    training = rdf["training_data"]
    assert "Data Science Bowl 2018" in training["name"] and "BBBC039" in training["name"]
    assert {c["doi"] for c in training["cite"]} == {"10.1038/s41592-019-0612-7", "10.1002/cyto.a.23863"}
    assert "597 training images" in training["description"] and "116 training images" in training["description"]
    assert "40 held-out images never loaded" in readme
    config = load_json(ModelBundleConfig, ModelBundle.open("default").folder / "config.json")
    halo = int(config.infer.tile * config.infer.overlap / 2)  # half of nucleiseg's tile overlap
    out_axes = {a["id"]: a for a in rdf["outputs"][0]["axes"] if a["type"] == "space"}
    assert halo == 128 and out_axes["y"]["halo"] == out_axes["x"]["halo"] == halo
    in_axes = {a["id"]: a for a in rdf["inputs"][0]["axes"] if a["type"] == "space"}
    assert in_axes["y"]["size"]["min"] > 2 * halo
    assert rdf["inputs"][0]["sample_tensor"]["source"] == "sample_input.png"
    assert rdf["outputs"][0]["sample_tensor"]["source"] == "sample_output.png"
    suite = json.loads((ModelBundle.open("default").folder / "accuracy.json").read_text())["summary"]
    for figure in (suite["unseen_kinds"], suite["validation"]):  # the model card's accuracy tables
        assert f"{figure:.4f}" in readme
    model_onnx = ModelBundle.open("default").folder / "model.onnx"
    with zipfile.ZipFile(package) as zf:
        assert zf.read("model.onnx") == model_onnx.read_bytes()


def test_bioimageio_core_model_test_passes_offline(package: Path) -> None:
    core = pytest.importorskip("bioimageio.core")
    summary = core.test_model(package)
    failed = [f"{d.name}: {[e.msg for e in d.errors]}" for d in summary.details if d.status != "passed"]
    assert summary.status == "passed", failed


def test_preprocessing_reproduces_nucleiseg_normalisation(package: Path) -> None:
    """The package's pre-processing, run by bioimageio.core, equals nucleiseg's normalize_image."""
    pytest.importorskip("bioimageio.core")
    from bioimageio.core import create_prediction_pipeline, load_model_description
    from bioimageio.core.digest_spec import create_sample_for_model

    descr = load_model_description(package, perform_io_checks=False)
    config = load_json(ModelBundleConfig, ModelBundle.open("default").folder / "config.json")
    rng = np.random.default_rng(3)
    raw = np.repeat(rng.gamma(2.0, 300.0, (1, 1, 280, 288)).astype(np.float32), 3, axis=1)
    raw[0, 1] *= 1.5  # channels differ: the percentiles are taken over all channels jointly
    raw[0, 2, :8] = 0.0
    sample = create_sample_for_model(descr, inputs=raw, sample_id="t")
    with create_prediction_pipeline(descr) as pipeline:
        pipeline.apply_preprocessing(sample)
    got = next(iter(sample.members.values())).data.to_numpy()
    expected = normalised_input(raw, config)
    assert got.shape == expected.shape and 0.0 < expected.mean() < 1.0
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_fit_test_image() -> None:
    from nucleiseg.export.bioimageio import fit_test_image

    image = np.arange(520 * 696).reshape(520, 696)
    assert fit_test_image(image, 320, 32).shape == (512, 672)
    np.testing.assert_array_equal(fit_test_image(image, 320, 32), image[:512, :672])
    assert fit_test_image(np.zeros((256, 256, 3)), 320, 32).shape == (320, 320, 3)


def test_model_card_tables_only_tables(tmp_path: Path) -> None:
    card = tmp_path / "MODEL_CARD.md"
    card.write_text("# Card\n\ntext\n\n## Accuracy\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n![x](y.png)\n", encoding="utf-8")
    assert model_card_tables(card).splitlines() == ["### Accuracy", "", "| a | b |", "|---|---|", "| 1 | 2 |"]
    assert "no model card" in model_card_tables(tmp_path / "missing.md").lower()


def test_fine_tuned_run_exports_and_passes_bioimageio_checks(tmp_path: Path, make_disks) -> None:
    """A fine-tuned run exports to ONNX and to a bioimage.io package that names its parent's data and the user's images."""
    from test_fine_tune import TINY, write_layout

    data = write_layout(tmp_path / "my_nuclei", "cellpose", make_disks)
    run = tmp_path / "ft"
    assert main(["train", "--from", "default", "--data", str(data), "--out", str(run), *TINY]) == 0
    assert main(["export", str(run), "-o", str(run / "model.onnx")]) == 0
    package = tmp_path / "ft.zip"
    assert main(["export", str(run), "--format", "bioimageio", "-o", str(package)]) == 0
    with zipfile.ZipFile(package) as zf:
        spec = yaml.safe_load(zf.read("rdf.yaml"))
        readme = zf.read("README.md").decode()
    assert "Data Science Bowl 2018" in spec["training_data"]["name"] and "fine-tuning images" in spec["training_data"]["name"]
    assert "fine-tuning images (my_nuclei, the user's own): 3 training images; fine-tuned from default" in readme
    core = pytest.importorskip("bioimageio.core")
    summary = core.test_model(package)
    assert summary.status == "passed", [f"{d.name}: {[e.msg for e in d.errors]}" for d in summary.details if d.status != "passed"]
