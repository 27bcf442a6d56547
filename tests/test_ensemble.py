"""The ensemble model: the mean of its members' probabilities, built from run folders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from nucleiseg.cli.main import main as cli_main
from nucleiseg.config import ModelBundleConfig, load_json, save_json
from nucleiseg.export.onnx import export_onnx
from nucleiseg.inference.segmenter import Segmenter
from nucleiseg.io.images import read_image
from nucleiseg.models import create_model, list_models
from nucleiseg.training.ensemble import make_ensemble

REPO = Path(__file__).resolve().parents[1]


def test_ensemble_returns_the_mean_probability():
    torch.manual_seed(0)
    members = [{"arch": "unet", "params": {"depth": 3, "base_channels": 8}},
               {"arch": "linknet", "params": {}}]
    model = create_model("ensemble", 3, 3, members=members).eval()
    x = torch.rand(2, 3, 45, 61)
    with torch.no_grad():
        expected = torch.stack([torch.sigmoid(m(x)) for m in model.members]).mean(0)
        got = torch.sigmoid(model(x))
    assert got.shape == (2, 3, 45, 61)
    assert torch.allclose(got, expected, atol=1e-5)
    assert model.stride == 32  # lcm of the members' strides (4 and 32)
    assert "ensemble" not in list_models()  # not a trainable architecture
    with pytest.raises(ValueError, match="at least 2"):
        create_model("ensemble", 3, 3, members=members[:1])


def _run(folder: Path, make_tiny_run, seed: int) -> Path:
    """A tiny run folder (random weights, shifted per seed) with a validation split."""
    make_tiny_run(folder)
    weights = folder / "weights.safetensors"
    from nucleiseg.training.checkpoint import load_model, save_weights

    model = load_model(load_json(ModelBundleConfig, folder / "config.json").model, weights)
    with torch.no_grad():
        model.head.bias += 0.5 * seed
    save_weights(model, weights)
    (folder / "model.onnx").unlink()
    (folder / "split.json").write_text(json.dumps({"seed": 2018, "train": ["a"], "val": ["b", "c"]}))
    return folder


def test_make_ensemble_segments_exports_and_checks_members(tmp_path, make_tiny_run):
    a = _run(tmp_path / "a", make_tiny_run, 0)
    b = _run(tmp_path / "b", make_tiny_run, 1)
    out = tmp_path / "ens"
    assert cli_main(["ensemble", str(a), str(b), "-o", str(out)]) == 0
    record = json.loads((out / "report.json").read_text())
    assert [m["run"] for m in record["members"]] == [str(a), str(b)]
    assert record["members"][0]["model"]["arch"] == "unet"
    assert json.loads((out / "split.json").read_text())["val"] == ["b", "c"]

    image = read_image(REPO / "examples" / "fluo_small.png")
    segs = [Segmenter.from_pretrained(f, backend="torch") for f in (a, b, out)]
    norm = segs[2].normalize(image)
    probs = [s.probabilities(norm) for s in segs]
    assert np.allclose(probs[2], (probs[0] + probs[1]) / 2, atol=1e-4)
    assert segs[2].segment(image).labels.shape == image.shape[:2]

    export_onnx(out, out / "model.onnx")  # the ensemble exports like any model
    onnx_probs = Segmenter.from_pretrained(out, backend="onnx").probabilities(norm)
    assert np.abs(onnx_probs - probs[2]).max() < 1e-3

    other = tmp_path / "c"
    shutil.copytree(b, other)
    cfg = load_json(ModelBundleConfig, other / "config.json")
    cfg.normalize.low = 5.0
    save_json(cfg, other / "config.json")
    with pytest.raises(ValueError, match="normalize differs"):
        make_ensemble([a, other], tmp_path / "bad")
    (b / "split.json").write_text(json.dumps({"seed": 1, "train": ["b"], "val": ["a"]}))
    with pytest.raises(ValueError, match="different splits"):
        make_ensemble([a, b], tmp_path / "bad2")
