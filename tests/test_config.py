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


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"epochs": "ten"}, "epochs: expected an integer, got 'ten'"),
        ({"epochs": 2.5}, "epochs: expected an integer, got 2.5"),
        ({"epochs": 0}, "epochs: expected a value >= 1, got 0"),
        ({"lr": -1.0}, "lr: expected a value > 0.0, got -1.0"),
        ({"oversample": "yes"}, "oversample: expected true or false, got 'yes'"),
        ({"amp": "fp16"}, "amp: expected one of auto, bf16, off, got 'fp16'"),
        ({"augment": {"flips": 1}}, "augment.flips: expected true or false, got 1"),
        ({"augment": {"noise_p": 1.5}}, r"augment.noise_p: expected a value in \[0.0, 1.0\], got 1.5"),
        ({"model": "unet"}, "model: expected a mapping of ModelConfig settings, got 'unet'"),
        ({"loss": {"channel_weights": [1.0, "a"]}}, r"loss.channel_weights\[1\]: expected a number, got 'a'"),
        ({"extra_data": ["x", {"path": "y", "limit_images": "all"}]}, r"extra_data\[1\].limit_images: expected an integer"),
        ({"postprocess": {"threshold_method": "mean"}}, "postprocess.threshold_method: expected one of fixed, otsu"),
        ({"model": {"arch": "unet", "depht": 3}}, "unknown ModelConfig option.*: model.depht"),
        ({"steps_per_epoch": None, "epochs": None}, "epochs: expected an integer, got None"),
    ],
)
def test_bad_values_are_refused_naming_the_key(data, message):
    with pytest.raises(ValueError, match=message):
        from_dict(TrainConfig, data)


def test_good_values_are_typed():
    cfg = from_dict(TrainConfig, {"lr": "3e-4", "epochs": 5, "extra_data": ["a", {"path": "b"}], "steps_per_epoch": None})
    assert cfg.lr == 3e-4 and isinstance(cfg.lr, float)  # PyYAML reads 3e-4 (no dot) as a string
    assert [e.path for e in cfg.extra_data] == ["a", "b"]
    bundle = from_dict(ModelBundleConfig, {"infer": {"diameter": None, "overlap": 0.25}, "postprocess": {"min_size": 0}})
    assert bundle.infer.diameter is None and bundle.postprocess.min_size == 0
    with pytest.raises(ValueError, match=r"infer.overlap: expected a value in \[0.0, 0.9\], got 1.0"):
        from_dict(ModelBundleConfig, {"infer": {"overlap": 1.0}})


def test_shipped_recipes_and_bundles_pass_the_checks():
    import yaml

    from conftest import REPO

    recipes = sorted((REPO / "configs").rglob("*.yaml"))
    assert len(recipes) > 10
    from nucleiseg.training.finetune import FineTuneConfig

    for recipe in recipes:  # fine_tune*.yaml hold fine-tuning settings, the others training recipes
        kind = FineTuneConfig if recipe.stem.startswith("fine_tune") else TrainConfig
        from_dict(kind, yaml.safe_load(recipe.read_text()) or {})
    for folder in (REPO / "src" / "nucleiseg" / "weights").iterdir():
        load_json(ModelBundleConfig, folder / "config.json")
        load_json(TrainConfig, folder / "train.json")


def test_bad_recipe_is_refused_by_the_train_command(tmp_path, capsys):
    from nucleiseg.cli.main import main

    recipe = tmp_path / "bad.yaml"
    recipe.write_text("epochs: ten\nlr: 0.001\n")
    assert main(["train", "--config", str(recipe), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err == "error: epochs: expected an integer, got 'ten'\n"
    assert not (tmp_path / "run").exists()
