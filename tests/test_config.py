"""Typed configs: JSON round trips, unknown keys rejected, nested types rebuilt."""

from __future__ import annotations

import json

import pytest

from nucleiseg.config import ModelBundleConfig, TrainConfig, from_dict, load_json, save_json, to_dict


def test_train_config_round_trip(tmp_path):
    cfg = TrainConfig(epochs=3, lr=5e-4)
    cfg.model.params = {"base_channels": 16}
    cfg.loss.channel_weights = [1.0, 0.3, 0.3]
    save_json(cfg, tmp_path / "train.json")
    back = load_json(TrainConfig, tmp_path / "train.json")
    assert back == cfg
    assert back.model.params == {"base_channels": 16}


def test_unknown_key_is_rejected():
    with pytest.raises(ValueError, match="unknown TrainConfig option"):
        from_dict(TrainConfig, {"epochz": 3})
    with pytest.raises(ValueError, match="unknown ModelConfig option"):
        from_dict(TrainConfig, {"model": {"arch": "unet", "depht": 3}})


def test_nested_and_optional_values():
    cfg = from_dict(TrainConfig, {"max_minutes": 20, "model": {"arch": "linknet"}, "steps_per_epoch": None})
    assert cfg.max_minutes == 20.0 and isinstance(cfg.max_minutes, float)
    assert cfg.model.arch == "linknet"
    assert cfg.steps_per_epoch is None


def test_bundle_json_is_plain(tmp_path):
    save_json(ModelBundleConfig(name="x"), tmp_path / "config.json")
    data = json.loads((tmp_path / "config.json").read_text())
    assert data["name"] == "x" and data["targets"]["mode"] == "contour"
    assert to_dict(load_json(ModelBundleConfig, tmp_path / "config.json")) == data


def test_public_api_is_lazy_and_complete():
    import subprocess
    import sys

    import nucleiseg

    assert callable(nucleiseg.segment) and callable(nucleiseg.create_model) and callable(nucleiseg.score)
    assert nucleiseg.Segmenter.from_pretrained("classical").is_classical
    with pytest.raises(AttributeError):
        nucleiseg.not_there  # noqa: B018
    code = "import sys, nucleiseg; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_train_recipe_amp_from_yaml_and_command_line(tmp_path):
    from nucleiseg.cli.main import build_parser, load_recipe

    recipe = tmp_path / "r.yaml"
    recipe.write_text("amp: off\nlr: 0.002\n")  # a bare YAML off is a boolean
    args = build_parser().parse_args(["train", "--config", str(recipe)])
    assert load_recipe(args).amp == "off"
    args = build_parser().parse_args(["train", "--config", str(recipe), "--amp", "bf16"])
    cfg = load_recipe(args)
    assert cfg.amp == "bf16" and cfg.lr == 0.002
    assert load_recipe(build_parser().parse_args(["train"])).amp == "auto"
