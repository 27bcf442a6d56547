"""Model registry: one mapping from architecture name to builder, and ``create_model``.

Examples
--------
>>> from nucleiseg.models import create_model, count_parameters
>>> model = create_model("unet", in_channels=1, out_channels=3, base_channels=8, depth=3)
>>> model.stride
4
>>> count_parameters(model) > 0
True
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from nucleiseg.models.blocks import check_int
from nucleiseg.models.ensemble import Ensemble
from nucleiseg.models.hrnet import HRNet
from nucleiseg.models.linknet import LinkNet
from nucleiseg.models.resunet import ResUNet
from nucleiseg.models.unet import UNet
from nucleiseg.models.unetpp import UNetPlusPlus


def ensemble(in_channels: int = 3, out_channels: int = 3, *, members: Sequence[dict[str, Any]] = ()) -> Ensemble:
    """An :class:`~nucleiseg.models.ensemble.Ensemble` of ``members``, each ``{"arch", "params"}``."""
    built = []
    for member in members:
        if not isinstance(member, dict) or member.get("arch") == "ensemble":
            raise ValueError(f"ensemble: each member must be {{'arch': ..., 'params': {{...}}}} of a plain model, got {member!r}")
        built.append(create_model(member["arch"], in_channels, out_channels, **dict(member.get("params") or {})))
    return Ensemble(built)


MODELS: dict[str, Callable[..., nn.Module]] = {
    "unet": UNet,
    "unetpp": UNetPlusPlus,
    "linknet": LinkNet,
    "hrnet": HRNet,
    "resunet": ResUNet,
    "ensemble": ensemble,
}


def list_models() -> list[str]:
    """The trainable architectures: ``unet, unetpp, linknet, hrnet, resunet``.

    :func:`create_model` also builds ``"ensemble"`` (of trained members; it is not trained).
    """
    return [name for name in MODELS if name != "ensemble"]


def _builder(name: str) -> Callable[..., nn.Module]:
    """The builder registered under ``name``; ValueError listing the names otherwise."""
    if not isinstance(name, str) or name not in MODELS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(MODELS)}")
    return MODELS[name]


def model_params(name: str) -> dict[str, Any]:
    """Architecture parameters of model ``name`` (besides the channel counts) with their defaults."""
    signature = inspect.signature(_builder(name))
    return {p.name: p.default for p in signature.parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY}


def create_model(name: str, in_channels: int = 3, out_channels: int = 3, **params: Any) -> nn.Module:
    """Build a segmentation network returning raw logits ``(B, out_channels, H, W)``.

    Every model has an int attribute ``stride``; inputs of any size work (they are padded to a
    multiple of ``stride`` internally and the logits cropped back).

    Parameters
    ----------
    name : str
        One of :func:`list_models`.
    in_channels, out_channels : int
        Image channels in, logit channels out.
    **params
        Architecture parameters (see :func:`model_params` and ``docs/models.md``), e.g.
        ``base_channels``, ``depth``, ``width``, ``encoder_depth``, ``weights_path``.

    Raises
    ------
    ValueError
        Unknown ``name`` (the message lists the available names), unknown parameter (the message
        lists the accepted ones) or an invalid parameter value.
    FileNotFoundError
        If ``weights_path`` is given but does not exist.
    """
    builder = _builder(name)
    allowed = model_params(name)
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(
            f"unknown parameter(s) for model {name!r}: {', '.join(unknown)}; accepted: {', '.join(allowed)}"
        )
    check_int("in_channels", in_channels, 1)
    check_int("out_channels", out_channels, 1)
    return builder(in_channels, out_channels, **params)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (elements) of ``model``, optionally only those requiring gradients."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
