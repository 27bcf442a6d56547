"""The bundled default model: loads, is the documented file, reproduces its reference output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nucleiseg.bundle import WEIGHTS_DIR
from nucleiseg.inference.segmenter import Segmenter
from nucleiseg.io import read_image, read_labels
from nucleiseg.metrics import match_labels
from nucleiseg.training.checkpoint import file_hash

DEFAULT = WEIGHTS_DIR / "default"
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def reference() -> dict:
    return json.loads((DEFAULT / "reference.json").read_text())


def test_bundle_is_complete_and_small():
    for name in ("config.json", "weights.safetensors", "thresholds.json", "MODEL_CARD.md", "reference.json"):
        assert (DEFAULT / name).is_file(), name
    assert (DEFAULT / "weights.safetensors").stat().st_size < 20 * 2**20


def test_hash_is_the_documented_one(reference):
    sha = file_hash(DEFAULT / "weights.safetensors")
    assert sha == reference["sha256"]
    assert sha in (DEFAULT / "MODEL_CARD.md").read_text()
    assert Segmenter.from_pretrained("default", backend="torch").model_hash == sha
    # the default backend runs the int8 ONNX form; its sidecars name that file's hash
    assert Segmenter.from_pretrained("default").model_hash == file_hash(DEFAULT / "model.int8.onnx")


@pytest.mark.parametrize("name", ["fluo_small", "tissue_he"])
def test_example_matches_reference_output(name, reference):
    seg = Segmenter.from_pretrained("default")
    labels = seg.segment(read_image(EXAMPLES / f"{name}.png")).labels
    ref = reference["examples"][name]
    assert abs(int(labels.max()) - ref["count"]) <= max(2, round(0.05 * ref["count"]))
    score = match_labels(read_labels(EXAMPLES / f"{name}_masks.tif"), labels).competition_score
    assert score == pytest.approx(ref["score"], abs=0.02)


@pytest.mark.parametrize("backend,file", [("onnx", "model.onnx"), ("onnx-int8", "model.int8.onnx")])
def test_shipped_onnx_forms_are_this_model(backend, file, reference):
    """The bundled ONNX files come from these weights and find the example's nuclei like PyTorch."""
    from nucleiseg.export.runtime import META, read_metadata

    meta = read_metadata(DEFAULT / file)
    assert meta[META["weights_hash"]] == reference["sha256"]
    fp32 = (DEFAULT / "model.onnx").stat().st_size
    if backend == "onnx-int8":
        import onnx

        assert (DEFAULT / file).stat().st_size < 0.35 * fp32
        # exported as int8 exports are now: RGB input padded to 4 channels (export.quantize.pad_input_channels)
        assert any(n.name == "pad_input_channels" for n in onnx.load(str(DEFAULT / file)).graph.node)
    seg = Segmenter.from_pretrained("default", backend=backend)
    labels = seg.segment(read_image(EXAMPLES / "fluo_small.png")).labels
    ref = reference["examples"]["fluo_small"]
    assert abs(int(labels.max()) - ref["count"]) <= max(2, round(0.05 * ref["count"]))
    score = match_labels(read_labels(EXAMPLES / "fluo_small_masks.tif"), labels).competition_score
    assert score == pytest.approx(ref["score"], abs=0.02)
