"""ONNX export (fp32, fp16, int8), the ONNX Runtime predictor and the Segmenter's onnx backend."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from nucleiseg.config import InferConfig, NormalizeConfig
from nucleiseg.export.onnx import check_parity, export_onnx, format_parity, load_torch_model
from nucleiseg.export.quantize import calibration_crops, convert_fp16, pad_input_channels
from nucleiseg.bundle import ModelBundle, ModelSpec
from nucleiseg.export.runtime import META, onnx_predictor, read_metadata
from nucleiseg.inference.predictors import torch_predictor
from nucleiseg.inference.segmenter import Segmenter
from nucleiseg.io.images import read_image
from nucleiseg.metrics import match_labels

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
PARAMS = {"depth": 3, "base_channels": 24}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, make_tiny_run) -> Path:
    """A random U-Net run folder with ``model.onnx``, its output biases shifted on a real image (many objects)."""
    return make_tiny_run(tmp_path_factory.mktemp("tiny_run"))


def test_fp32_matches_torch_with_dynamic_axes(tiny_run: Path) -> None:
    model, _, _, _ = load_torch_model(tiny_run)
    ref, ort = torch_predictor(model), onnx_predictor(tiny_run / "model.onnx", threads=1)
    rng = np.random.default_rng(0)
    for shape in ((1, 3, 64, 96), (3, 3, 128, 32)):
        x = rng.random(shape, dtype=np.float32)
        out = ort(x)
        assert out.shape == (shape[0], 3, *shape[2:])
        assert np.abs(out - ref(x)).max() < 1e-4
        assert 0.0 <= out.min() and out.max() <= 1.0  # probabilities, not logits


def test_metadata_describes_the_model(tiny_run: Path) -> None:
    meta = read_metadata(tiny_run / "model.onnx")
    assert meta[META["stride"]] == "4"
    assert meta[META["precision"]] == "fp32"
    assert len(meta[META["weights_hash"]]) == 64
    assert json.loads(meta[META["config"]])["model"]["params"] == PARAMS
    ort = onnx_predictor(tiny_run / "model.onnx")
    assert ort.stride == 4 and ort.input_name == "image"
    with pytest.raises(ValueError, match="divisible by 4"):
        ort(np.zeros((1, 3, 30, 32), np.float32))


def test_fp16_is_half_size_and_close(tiny_run: Path, tmp_path: Path) -> None:
    out = export_onnx(tiny_run, tmp_path / "half.onnx", fp16=True)
    ratio = out.stat().st_size / (tiny_run / "model.onnx").stat().st_size
    assert 0.4 < ratio < 0.6
    x = np.random.default_rng(1).random((2, 3, 64, 64), dtype=np.float32)
    full, half = onnx_predictor(tiny_run / "model.onnx")(x), onnx_predictor(out)(x)
    assert 0 < np.abs(full - half).max() < 1e-2  # rounded weights, not the fp32 graph
    assert read_metadata(out)[META["precision"]] == "fp16"


def test_convert_fp16_keeps_small_initializers_and_rejects_overflow() -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    big = numpy_helper.from_array(np.full((4, 8), 70000.0, np.float32), name="w")
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8])], [big],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(ValueError, match="float16 range"):
        convert_fp16(model)
    small = convert_fp16(model, min_elements=64)  # 32 elements: kept as float32
    assert small.graph.initializer[0].data_type == TensorProto.FLOAT
    onnx.checker.check_model(small)


def test_int8_static_is_small_and_correlated(tiny_run: Path, tmp_path: Path) -> None:
    out = export_onnx(tiny_run, tmp_path / "q.onnx", int8=True, calib_images=4, calib_source=EXAMPLES)
    assert out.stat().st_size < 0.35 * (tiny_run / "model.onnx").stat().st_size
    assert read_metadata(out)[META["precision"]] == "int8-static"
    crops = np.stack(calibration_crops([EXAMPLES / "tissue_he.png", EXAMPLES / "fluo_wide.png"], 2, NormalizeConfig(), size=128, seed=5))
    full, quant = onnx_predictor(tiny_run / "model.onnx")(crops), onnx_predictor(out)(crops)
    assert np.abs(full - quant).mean() < 0.1
    assert np.corrcoef(full.ravel(), quant.ravel())[0, 1] > 0.9


def test_padding_the_input_channels_changes_nothing_but_the_first_convolution(tiny_run: Path, tmp_path: Path) -> None:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(tiny_run / "model.onnx"))
    padded = pad_input_channels(onnx.load(str(tiny_run / "model.onnx")))
    onnx.checker.check_model(padded)
    first = next(n for n in padded.graph.node if n.op_type == "Conv")
    weights = {i.name: numpy_helper.to_array(i) for i in padded.graph.initializer}
    assert padded.graph.node[0].op_type == "Pad" and first.input[0] == padded.graph.node[0].output[0]
    assert weights[first.input[1]].shape[1] == 4 and not weights[first.input[1]][:, 3:].any()
    onnx.save(padded, str(tmp_path / "padded.onnx"))
    x = np.random.default_rng(4).random((2, 3, 64, 96), dtype=np.float32)  # the input stays 3 channels
    np.testing.assert_allclose(onnx_predictor(tmp_path / "padded.onnx")(x), onnx_predictor(tiny_run / "model.onnx")(x), atol=1e-5)
    again = pad_input_channels(padded)  # already a multiple of 4: unchanged
    assert sum(n.op_type == "Pad" for n in again.graph.node) == 1
    assert len(model.graph.node) + 1 == len(padded.graph.node)


def test_padding_reaches_every_convolution_that_reads_the_input(tmp_path: Path) -> None:
    """An ensemble's members each read the image: one Pad feeds them all, the output is unchanged."""
    import onnx

    from nucleiseg.config import ModelBundleConfig, ModelConfig, save_json
    from nucleiseg.models import create_model
    from nucleiseg.training.checkpoint import save_weights

    members = [{"arch": "unet", "params": {"depth": 3, "base_channels": 8}}] * 2
    torch.manual_seed(0)
    save_weights(create_model("ensemble", 3, 3, members=members), tmp_path / "weights.safetensors")
    save_json(ModelBundleConfig(model=ModelConfig(arch="ensemble", params={"members": members})), tmp_path / "config.json")
    export_onnx(tmp_path, tmp_path / "model.onnx")
    padded = pad_input_channels(onnx.load(str(tmp_path / "model.onnx")))
    name = padded.graph.input[0].name
    assert [n.name for n in padded.graph.node if name in n.input] == ["pad_input_channels"]
    assert sum(n.input[0] == f"{name}_padded" for n in padded.graph.node if n.op_type == "Conv") == 2
    onnx.save(padded, str(tmp_path / "padded.onnx"))
    x = np.random.default_rng(5).random((1, 3, 32, 40), dtype=np.float32)
    np.testing.assert_allclose(onnx_predictor(tmp_path / "padded.onnx")(x), onnx_predictor(tmp_path / "model.onnx")(x), atol=1e-5)


def test_int8_export_pads_the_input_channels(tiny_run: Path, tmp_path: Path) -> None:
    import onnx

    out = export_onnx(tiny_run, tmp_path / "q4.onnx", int8=True, calib_images=2, calib_source=EXAMPLES)
    nodes = onnx.load(str(out)).graph.node
    assert any(n.op_type == "Pad" and n.name == "pad_input_channels" for n in nodes)
    assert onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim[1].dim_value == 3


def test_int8_dynamic_needs_no_data(tiny_run: Path, tmp_path: Path) -> None:
    out = export_onnx(tiny_run, tmp_path / "d.onnx", int8=True, int8_mode="dynamic")
    assert out.stat().st_size < 0.6 * (tiny_run / "model.onnx").stat().st_size
    x = np.random.default_rng(2).random((1, 3, 32, 32), dtype=np.float32)
    assert np.abs(onnx_predictor(out)(x) - onnx_predictor(tiny_run / "model.onnx")(x)).mean() < 0.1


def test_export_rejects_bad_requests(tiny_run: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not both"):
        export_onnx(tiny_run, tmp_path / "x.onnx", fp16=True, int8=True)
    with pytest.raises(ValueError, match=r"\.onnx"):
        export_onnx(tiny_run, tmp_path / "x.bin")
    with pytest.raises(ValueError, match="int8 mode"):
        export_onnx(tiny_run, tmp_path / "x.onnx", int8=True, int8_mode="weird")
    with pytest.raises(FileNotFoundError, match="no model there"):
        export_onnx(tmp_path / "missing", tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_segmenter_onnx_backend_matches_torch(tiny_run: Path) -> None:
    image = read_image(EXAMPLES / "fluo_small.png")
    infer = InferConfig(rescale=False)
    torch_seg = Segmenter.from_pretrained(tiny_run)
    onnx_seg = Segmenter.from_pretrained(tiny_run, backend="onnx")
    assert onnx_seg.stride == torch_seg.stride == 4
    assert onnx_seg.name == "tiny-onnx-fp32" and onnx_seg.config == torch_seg.config
    a, b = torch_seg.segment(image, infer), onnx_seg.segment(image, infer)
    assert a.count >= 10
    assert np.abs(a.probabilities - b.probabilities).max() < 1e-5
    # Identical except where a probability sits within ~1e-7 of a threshold.
    assert (a.labels != b.labels).mean() < 1e-3
    assert match_labels(a.labels, b.labels).competition_score > 0.97
    by_file = Segmenter.from_pretrained(tiny_run / "model.onnx", backend="onnx")
    assert np.array_equal(by_file.segment(image, infer).labels, b.labels)


def test_onnx_backend_errors(tiny_run: Path, tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text((tiny_run / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="nucleiseg export"):
        Segmenter.from_pretrained(bare, backend="onnx")
    with pytest.raises(FileNotFoundError, match="not found"):
        ModelBundle.open(tmp_path / "nothing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="junk.onnx"):
        ModelBundle.open(tmp_path / "junk.onnx")
    with pytest.raises(ValueError, match="unknown backend"):
        Segmenter.from_pretrained(tiny_run, backend="tensorrt")


def test_parity_report(tiny_run: Path) -> None:
    report = check_parity(tiny_run, tiny_run / "model.onnx", images=EXAMPLES, n_images=2)
    assert report["max_abs_diff_random"] < 1e-4 and report["max_abs_diff_real"] < 1e-4
    assert len(report["images"]) == 2 and report["score_torch"] is not None
    assert abs(report["score_diff"]) < 0.02 and report["label_agreement"] > 0.95
    text = format_parity(report)
    assert "competition score" in text and "fp32" in text


def test_export_cli(tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from nucleiseg.cli.export import add_parser

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    out = tmp_path / "cli.onnx"
    args = parser.parse_args([
        "export", str(tiny_run), "--format", "onnx", "--fp16", "-o", str(out),
        "--check-images", str(EXAMPLES), "--check-count", "1", "--json", str(tmp_path / "parity.json"),
    ])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "max |p_onnx - p_torch|" in printed
    assert json.loads((tmp_path / "parity.json").read_text())["precision"] == "fp16"
    with pytest.raises(SystemExit):
        parser.parse_args(["export", str(tiny_run), "--fp16", "--int8"])


def test_precision_backends_load_their_files(tiny_run: Path, tmp_path: Path) -> None:
    """``onnx-int8`` / ``onnx-fp16`` load the folder's model.int8.onnx / model.fp16.onnx."""
    folder = tmp_path / "run"
    shutil.copytree(tiny_run, folder)
    export_onnx(folder, folder / "model.int8.onnx", int8=True, calib_images=2, calib_source=EXAMPLES)
    seg = Segmenter.from_pretrained(folder, backend="onnx-int8")
    assert seg.name == "tiny-onnx-int8-static" and seg.source == ModelSpec(str(folder.resolve()), "onnx-int8", "cpu", None)
    assert read_metadata(seg.predictor.path)[META["precision"]].startswith("int8")
    with pytest.raises(FileNotFoundError, match="--fp16"):
        Segmenter.from_pretrained(folder, backend="onnx-fp16")


def test_parity_on_whole_images(tiny_run: Path) -> None:
    cropped = check_parity(tiny_run, tiny_run / "model.onnx", images=EXAMPLES, n_images=1, max_side=64)
    whole = check_parity(tiny_run, tiny_run / "model.onnx", images=EXAMPLES, n_images=1, max_side=None)
    assert cropped["images"] == whole["images"] and whole["max_abs_diff_real"] < 1e-4
    assert cropped["values_compared"] == 3 * 64 * 64 and whole["values_compared"] == 3 * 1024 * 1024  # brightfield.png, 1024 px
