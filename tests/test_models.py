"""Tests of nucleiseg.models: shapes on odd sizes, gradients, determinism, save/load, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from nucleiseg.models import count_parameters, create_model, list_models, load_encoder_weights, model_params

# Small configurations of every architecture, so the whole file stays fast on two CPU cores.
# Lists (not tuples) on purpose: parameters usually come from JSON configs.
SMALL: dict[str, dict] = {
    "unet": {"depth": 3, "base_channels": 8},
    "unetpp": {"depth": 3, "base_channels": 8},
    "linknet": {"width": 0.125},
    "hrnet": {"width": 4, "num_blocks": 1, "num_modules": [1, 1, 1]},
    "resunet": {"width": 0.125, "decoder_channels": [32, 16, 16, 8, 8]},
}
ARCHS = list(SMALL)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread is as fast and immune to oversubscription on shared CPUs."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def small(name: str, in_channels: int = 3, out_channels: int = 3, seed: int = 0, **extra) -> torch.nn.Module:
    """A small, seeded instance of architecture ``name``."""
    torch.manual_seed(seed)
    return create_model(name, in_channels, out_channels, **{**SMALL[name], **extra})


def test_list_models_matches_contract() -> None:
    assert list_models() == ["unet", "unetpp", "linknet", "hrnet", "resunet"]
    assert set(SMALL) == set(list_models())


@pytest.mark.parametrize("name", ARCHS)
@pytest.mark.parametrize(
    ("shape", "out_channels"), [((1, 3, 37, 53), 3), ((2, 1, 64, 64), 1), ((1, 4, 33, 20), 3), ((2, 3, 19, 41), 1)]
)
def test_forward_backward_any_size(name: str, shape: tuple[int, int, int, int], out_channels: int) -> None:
    model = small(name, in_channels=shape[1], out_channels=out_channels).train()
    assert isinstance(model.stride, int) and model.stride >= 2
    x = torch.randn(*shape)
    y = model(x)
    assert y.shape == (shape[0], out_channels, shape[2], shape[3])
    assert torch.isfinite(y).all()
    (y.square().mean() + y.mean()).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{name}: no gradient for {pname}"
        assert torch.isfinite(p.grad).all(), f"{name}: non-finite gradient for {pname}"
    assert any(p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize(
    ("name", "extra"),
    [
        ("unet", {"upsample": "bilinear", "batch_norm": False}),
        ("unet", {"stem": 2}),
        ("unetpp", {"deep_supervision": True, "batch_norm": False}),
        ("linknet", {"encoder_depth": 34}),
        ("hrnet", {"stem_stride": 4, "num_blocks": 2}),
        ("resunet", {"upsample": "transpose", "encoder_depth": 34}),
    ],
)
def test_variants_forward_backward(name: str, extra: dict) -> None:
    model = small(name, **extra).train()
    y = model(torch.randn(2, 3, 37, 53))
    assert y.shape == (2, 3, 37, 53)
    y.mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_unet_dropout_only_in_training() -> None:
    model = small("unet", dropout=0.5)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert not torch.equal(model.train()(x), model(x))
        assert torch.equal(model.eval()(x), model(x))


@pytest.mark.parametrize("name", ARCHS)
def test_divisible_input_needs_no_padding(name: str) -> None:
    model = small(name).eval()
    x = torch.randn(1, 3, 2 * model.stride, model.stride)
    with torch.inference_mode():
        assert torch.equal(model(x), model.forward_padded(x))


@pytest.mark.parametrize("name", ARCHS)
def test_eval_is_deterministic(name: str) -> None:
    model = small(name).eval()
    x = torch.randn(2, 3, 45, 30)
    with torch.inference_mode():
        first, second = model(x), model(x)
    assert torch.equal(first, second)


@pytest.mark.parametrize("name", ARCHS)
def test_safetensors_round_trip_is_bit_identical(name: str, tmp_path: Path) -> None:
    model = small(name, seed=1).train()
    with torch.no_grad():
        model(torch.randn(2, 3, 40, 40))  # move BatchNorm running statistics off their defaults
    model.eval()
    path = tmp_path / "weights.safetensors"
    save_file(model.state_dict(), str(path))
    fresh = small(name, seed=2).eval()
    x = torch.randn(1, 3, 50, 35)
    with torch.inference_mode():
        expected = model(x)
        assert not torch.equal(fresh(x), expected)  # different seed: the round trip is what matters
        fresh.load_state_dict(load_file(str(path)), strict=True)
        assert torch.equal(fresh(x), expected)


def test_unknown_model_lists_names() -> None:
    with pytest.raises(ValueError, match="unknown model 'segformer'") as info:
        create_model("segformer")
    for name in list_models():
        assert name in str(info.value)


@pytest.mark.parametrize("name", ARCHS)
def test_unknown_parameter_is_rejected(name: str) -> None:
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) for model .*: colour, levels; accepted: "):
        create_model(name, levels=3, colour="red")


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("unet", {"depth": 1}, "depth must be in"),
        ("unet", {"upsample": "nearest"}, "upsample must be one of"),
        ("unet", {"dropout": 1.5}, "dropout must be in"),
        ("unet", {"stem": 0}, "stem must be in"),
        ("unetpp", {"head": 0}, "deep_supervision=True"),
        ("unetpp", {"deep_supervision": True, "head": 5}, "head must be in"),
        ("linknet", {"encoder_depth": 50}, "encoder_depth must be one of"),
        ("linknet", {"width": 0}, "width must be in"),
        ("hrnet", {"stem_stride": 3}, "stem_stride must be one of"),
        ("hrnet", {"num_modules": [1, 1]}, "num_modules must be a sequence of 3"),
        ("resunet", {"decoder_channels": [8, 8]}, "decoder_channels must be a sequence of 5"),
    ],
)
def test_invalid_parameter_values(name: str, params: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        create_model(name, **params)


def test_invalid_channels_and_input() -> None:
    with pytest.raises(ValueError, match="in_channels must be"):
        create_model("unet", in_channels=0)
    model = small("unet", in_channels=1).eval()
    with pytest.raises(ValueError, match=r"expected input of shape \(B, 1, H, W\)"):
        model(torch.zeros(1, 3, 16, 16))


def test_unet_stem_runs_at_reduced_resolution() -> None:
    """``stem=2``: no layer sees the full resolution, the logits are put back pixel for pixel."""
    plain, stem = create_model("unet", depth=3, base_channels=4), create_model("unet", depth=3, base_channels=4, stem=2)
    assert (plain.stride, stem.stride) == (4, 8)
    assert "unshuffle" not in "".join(plain.state_dict())  # a stem of 1 keeps the old state dict
    seen: list[tuple[int, int]] = []
    for conv in (m for m in stem.modules() if isinstance(m, torch.nn.Conv2d)):
        conv.register_forward_hook(lambda _m, _i, out: seen.append(tuple(out.shape[-2:])))
    y = stem.eval()(torch.randn(1, 3, 32, 48))
    assert y.shape == (1, 3, 32, 48)
    assert max(seen) == (16, 24)
    head = stem.head
    with torch.no_grad():  # a head that outputs channel c*4 + k at every half-res pixel
        head.weight.zero_()
        head.bias.copy_(torch.arange(12, dtype=torch.float32))
        y = stem(torch.randn(1, 3, 32, 48))
    assert y[0, 1, 0, 0] == 4 and y[0, 1, 0, 1] == 5 and y[0, 1, 1, 0] == 6 and y[0, 1, 1, 1] == 7
    assert torch.equal(y[0, 1, 2:4, 2:4], y[0, 1, 0:2, 0:2])


def test_unetpp_deep_supervision_train_and_eval() -> None:
    model = small("unetpp", deep_supervision=True, depth=4)
    assert len(model.heads) == 3
    x = torch.randn(2, 3, 24, 40)
    model.train()
    with torch.no_grad():
        heads = model.forward_heads(x)
        assert len(heads) == 3 and all(h.shape == (2, 3, 24, 40) for h in heads)
        assert torch.allclose(model(x), torch.stack(heads).mean(0), atol=1e-6)
    model.eval()
    with torch.inference_mode():
        heads = model.forward_heads(x)
        last = model(x)
        assert torch.equal(last, heads[-1])
        assert not torch.allclose(heads[0], heads[-1])
        model.head = "mean"
        assert torch.allclose(model(x), torch.stack(heads).mean(0), atol=1e-6)
    for index in (0, 1, -1):
        pruned = small("unetpp", deep_supervision=True, depth=4, head=index).eval()
        pruned.load_state_dict(model.state_dict())
        with torch.inference_mode():
            assert torch.allclose(pruned(x), heads[index], atol=1e-6)


def test_unetpp_without_deep_supervision_has_one_head() -> None:
    model = small("unetpp")
    assert len(model.heads) == 1
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(model.train()(x), model.forward_heads(x)[0])


def test_resunet_depth_50_builds_and_runs() -> None:
    model = small("resunet", encoder_depth=50)
    assert model.encoder.out_channels == [8, 32, 64, 128, 256]  # bottleneck expansion 4
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 40, 33)).shape == (1, 3, 40, 33)


def test_hrnet_presets_and_stem_stride() -> None:
    light = create_model("hrnet", preset="light", stem_stride=4, num_modules=[1, 1, 1])
    assert light.stride == 32 and light.encoder.out_channels == [16, 32, 64, 128]
    assert model_params("hrnet")["preset"] == "standard"
    assert count_parameters(create_model("hrnet", preset="light")) < count_parameters(create_model("hrnet"))


def test_count_parameters() -> None:
    model = small("unet")
    total = sum(p.numel() for p in model.parameters())
    assert count_parameters(model) == total
    for p in model.encoder.parameters():
        p.requires_grad_(False)
    frozen = sum(p.numel() for p in model.encoder.parameters())
    assert count_parameters(model, trainable_only=True) == total - frozen


@pytest.mark.parametrize("name", ["unet", "linknet", "hrnet"])
def test_weights_path_loads_encoder(name: str, tmp_path: Path) -> None:
    source = small(name, seed=3)
    path = tmp_path / "encoder.safetensors"
    save_file(source.encoder.state_dict(), str(path))
    loaded = small(name, seed=4, weights_path=str(path))
    for key, value in source.encoder.state_dict().items():
        assert torch.equal(loaded.encoder.state_dict()[key], value), key
    other = small(name, seed=4)
    pairs = zip(other.encoder.state_dict().values(), source.encoder.state_dict().values())
    assert not all(torch.equal(a, b) for a, b in pairs)


def test_weights_path_prefix_classifier_and_errors(tmp_path: Path) -> None:
    source = small("linknet", seed=5)
    state = {f"encoder.{k}": v for k, v in source.encoder.state_dict().items() if not k.endswith("num_batches_tracked")}
    prefixed = tmp_path / "prefixed.safetensors"
    save_file(state, str(prefixed))
    target = small("resunet", seed=6)  # same ResNet-18 encoder at width 0.125
    load_encoder_weights(target.encoder, prefixed)
    assert torch.equal(target.encoder.conv1.weight, source.encoder.conv1.weight)

    with_fc = tmp_path / "with_fc.safetensors"
    classifier = {"fc.weight": torch.zeros(10, 64), "fc.bias": torch.zeros(10)}
    save_file({**source.encoder.state_dict(), **classifier}, str(with_fc))
    small("linknet", weights_path=with_fc)  # a classifier head in the file is ignored

    with pytest.raises(ValueError, match="missing .*; unexpected "):
        small("unet", weights_path=prefixed)
    wrong_width = tmp_path / "wide.safetensors"
    save_file(small("linknet", width=0.25).encoder.state_dict(), str(wrong_width))
    with pytest.raises(ValueError, match="shape of conv1.weight is"):
        small("linknet", weights_path=wrong_width)
    with pytest.raises(FileNotFoundError, match="encoder weights file not found"):
        small("unet", weights_path=tmp_path / "absent.safetensors")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="cannot read safetensors file"):
        small("unet", weights_path=garbage)
