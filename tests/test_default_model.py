"""The bundled models (``default``, and ``accurate``, an ensemble): each loads, is the documented
file, reproduces its reference output, and its shipped ONNX forms come from its weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nucleiseg.bundle import WEIGHTS_DIR
from nucleiseg.inference.segmenter import Segmenter
from nucleiseg.io import read_image, read_labels
from nucleiseg.metrics import match_labels
from nucleiseg.training.checkpoint import file_hash

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
BUNDLED = ["default", "accurate"]


def reference(model: str) -> dict:
    return json.loads((WEIGHTS_DIR / model / "reference.json").read_text())


@pytest.mark.parametrize("model", BUNDLED)
def test_bundle_is_complete_and_small(model):
    folder = WEIGHTS_DIR / model
    for name in ("config.json", "weights.safetensors", "thresholds.json", "MODEL_CARD.md", "reference.json",
                 "model.int8.onnx", "size_model.json"):
        assert (folder / name).is_file(), name
    assert (folder / "weights.safetensors").stat().st_size < 20 * 2**20


def test_accurate_is_an_ensemble_holding_the_default():
    """``accurate`` averages a larger U-Net with the default model (the same weights)."""
    from nucleiseg.bundle import ModelBundle
    from safetensors.numpy import load_file

    config = ModelBundle.open("accurate").config
    assert config.model.arch == "ensemble" and len(config.model.params["members"]) == 2
    default = load_file(WEIGHTS_DIR / "default" / "weights.safetensors")
    accurate = load_file(WEIGHTS_DIR / "accurate" / "weights.safetensors")
    for key, value in default.items():
        assert (accurate[f"members.1.{key}"] == value).all(), key


@pytest.mark.parametrize("model", BUNDLED)
def test_hash_is_the_documented_one(model):
    folder = WEIGHTS_DIR / model
    sha = file_hash(folder / "weights.safetensors")
    assert sha == reference(model)["sha256"]
    assert sha in (folder / "MODEL_CARD.md").read_text()
    assert Segmenter.from_pretrained(model, backend="torch").model_hash == sha
    # the default backend runs the int8 ONNX form; its sidecars name that file's hash
    assert Segmenter.from_pretrained(model).model_hash == file_hash(folder / "model.int8.onnx")


def example_scores(seg: Segmenter, names: list[str]) -> dict[str, tuple[int, float]]:
    """``{name: (count, competition score)}`` of ``seg`` on the bundled examples ``names``."""
    out = {}
    for name in names:
        labels = seg.segment(read_image(EXAMPLES / f"{name}.png")).labels
        out[name] = (int(labels.max()), match_labels(read_labels(EXAMPLES / f"{name}_masks.tif"), labels).competition_score)
    return out


@pytest.mark.parametrize("model", BUNDLED)
@pytest.mark.parametrize("name", ["fluo_small", "tissue_he"])
def test_example_matches_reference_output(model, name):
    """Full precision (fp32 ONNX, or PyTorch for the ensemble) reproduces the reference on any CPU."""
    ref = reference(model)["full_precision"]
    count, score = example_scores(Segmenter.from_pretrained(model, backend=ref["backend"]), [name])[name]
    assert abs(count - ref["examples"][name]["count"]) <= 1
    assert score == pytest.approx(ref["examples"][name]["score"], abs=0.005)


@pytest.mark.parametrize("model", BUNDLED)
def test_int8_default_backend_close_to_full_precision(model):
    """What ``nucleiseg segment`` runs (int8 ONNX) scores within 0.02 of full precision over the five
    examples; int8 kernels differ between CPUs (VNNI or not), so single images may differ more."""
    ref = reference(model)["full_precision"]["examples"]
    scores = example_scores(Segmenter.from_pretrained(model), sorted(ref))
    mean_int8 = sum(s for _, s in scores.values()) / len(scores)
    mean_full = sum(r["score"] for r in ref.values()) / len(ref)
    assert mean_int8 == pytest.approx(mean_full, abs=0.02)


@pytest.mark.parametrize("model,backend,file", [("default", "onnx", "model.onnx"), ("default", "onnx-int8", "model.int8.onnx"),
                                                ("accurate", "onnx-int8", "model.int8.onnx")])
def test_shipped_onnx_forms_are_this_model(model, backend, file):
    """The bundled ONNX files come from these weights and find the example's nuclei like PyTorch.

    ``accurate`` ships its int8 form only (``nucleiseg export accurate`` writes the fp32 one)."""
    from nucleiseg.export.runtime import META, read_metadata

    folder = WEIGHTS_DIR / model
    meta = read_metadata(folder / file)
    assert meta[META["weights_hash"]] == reference(model)["sha256"]
    if backend == "onnx-int8":
        import onnx

        assert (folder / file).stat().st_size < 0.35 * (folder / "weights.safetensors").stat().st_size
        # exported as int8 exports are now: RGB input padded to 4 channels (export.quantize.pad_input_channels)
        assert any(n.name == "pad_input_channels" for n in onnx.load(str(folder / file)).graph.node)
    count, score = example_scores(Segmenter.from_pretrained(model, backend=backend), ["fluo_wide"])["fluo_wide"]
    ref = reference(model)["full_precision"]["examples"]["fluo_wide"]
    assert abs(count - ref["count"]) <= max(2, round(0.05 * ref["count"]))
    assert score == pytest.approx(ref["score"], abs=0.02)


@pytest.mark.parametrize("model", BUNDLED)
def test_shipped_int8_weights_use_seven_bits(model):
    """int8 weights within +-64 (``reduce_range``): ONNX Runtime's u8 x s8 kernels on CPUs without VNNI
    saturate with full-range weights (the full-range default lost 0.02 of its validation score on an
    AVX2-only CPU)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(WEIGHTS_DIR / model / "model.int8.onnx")).graph
    weights = [numpy_helper.to_array(t) for t in graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert weights, "no int8 initializers"
    assert max(int(abs(w.astype(int)).max()) for w in weights) <= 64
