"""Field-by-field checks of plain settings data (recipes, ``config.json``) against typed dataclasses.

:func:`nucleiseg.config.from_dict` calls :func:`coerce` for every key: the value must fit the
field's annotation (``bool``, ``int``, ``float``, ``str``, ``list[...]``, ``dict``, optional
values, nested dataclasses) and, where :data:`LIMITS` names the field, its range or choices.
A mismatch raises :class:`ValueError` with one line that names the dotted key, e.g.
``epochs: expected an integer, got 'ten'``.

This module knows the config classes only by name, so :mod:`nucleiseg.config` can import it.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Callable
from typing import Any

__all__ = ["LIMITS", "coerce"]

_UNIT = (0.0, 1.0)
_POS = (0.0, None, False)  # greater than 0
_NONNEG = (0.0, None)
_ONE_UP = (1, None)

#: ``"Class.field"`` -> ``(low, high)`` (inclusive; a third item False makes ``low`` exclusive),
#: or a tuple of allowed strings (compared lower-case).
LIMITS: dict[str, tuple[Any, ...]] = {
    "NormalizeConfig.mode": ("percentile", "minmax", "none"),
    "NormalizeConfig.low": (0.0, 100.0), "NormalizeConfig.high": (0.0, 100.0),
    "NormalizeConfig.channels": _ONE_UP,
    "TargetConfig.mode": ("binary", "contour"),
    "TargetConfig.contour_width": _ONE_UP, "TargetConfig.separation_width": (0, None),
    "ModelConfig.in_channels": _ONE_UP, "ModelConfig.out_channels": _ONE_UP,
    "PostprocessConfig.threshold": _UNIT, "PostprocessConfig.threshold_method": ("fixed", "otsu"),
    "PostprocessConfig.marker_threshold": _UNIT, "PostprocessConfig.min_size": (0, None),
    "PostprocessConfig.min_marker_size": (0, None), "PostprocessConfig.marker_distance": _NONNEG,
    "PostprocessConfig.diameter": _POS, "PostprocessConfig.min_confidence": _UNIT,
    "AugmentConfig.scale_min": _POS, "AugmentConfig.scale_max": _POS,
    "AugmentConfig.jpeg_quality_min": (1, 100), "AugmentConfig.downscale_min": (0.0, 1.0, False),
    "AugmentConfig.hed_scale": _NONNEG, "AugmentConfig.hed_shift": _NONNEG,
    "ExtraDataConfig.limit_images": _ONE_UP,
    "LossConfig.bce": _NONNEG, "LossConfig.dice": _NONNEG, "LossConfig.jaccard": _NONNEG,
    "LossConfig.focal": _NONNEG, "LossConfig.focal_gamma": _NONNEG, "LossConfig.gap_weight": _NONNEG,
    "LossConfig.distill": _NONNEG,
    "TrainConfig.val_fraction": (0.0, 1.0), "TrainConfig.epochs": _ONE_UP,
    "TrainConfig.steps_per_epoch": _ONE_UP, "TrainConfig.crop_size": (16, None),
    "TrainConfig.batch_size": _ONE_UP, "TrainConfig.lr": _POS, "TrainConfig.weight_decay": _NONNEG,
    "TrainConfig.optimizer": ("adam", "adamw", "sgd", "rmsprop"),
    "TrainConfig.scheduler": ("cosine", "plateau", "none"), "TrainConfig.patience": (0, None),
    "TrainConfig.max_minutes": _POS, "TrainConfig.val_max_images": _ONE_UP, "TrainConfig.threads": _ONE_UP,
    "TrainConfig.workers": (0, None), "TrainConfig.limit_images": _ONE_UP, "TrainConfig.train_diameter": _POS,
    "TrainConfig.amp": ("auto", "bf16", "off"), "TrainConfig.average_bn_batches": (0, None),
    "InferConfig.tile": (16, None), "InferConfig.overlap": (0.0, 0.9), "InferConfig.batch_size": _ONE_UP,
    "InferConfig.blend": ("gaussian", "constant"), "InferConfig.diameter": _POS,
    "InferConfig.target_diameter": _POS, "InferConfig.rescale_tolerance": (1.0, None),
    "InferConfig.min_zoom": _POS, "InferConfig.max_zoom": _POS,
}
# Every probability of the augmentation lies in [0, 1].
LIMITS.update({f"AugmentConfig.{p}": _UNIT for p in (
    "affine_p", "elastic_p", "grid_distortion_p", "brightness_contrast_p", "gamma_p", "hue_p", "blur_p",
    "noise_p", "grayscale_p", "invert_p", "hed_p", "jpeg_p", "downscale_p", "tissue_p")})

# YAML 1.1 (PyYAML) reads ``1e-3`` (no dot) as a string; such a string is taken as the float it spells.
_FLOAT_TEXT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+")


def _fail(key: str, expected: str, value: Any) -> ValueError:
    return ValueError(f"{key}: expected {expected}, got {value!r}")


def _scalar(tp: Any, key: str, value: Any) -> Any:
    if tp is bool:
        if not isinstance(value, bool):
            raise _fail(key, "true or false", value)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _fail(key, "an integer", value)
        return value
    if tp is float:
        if isinstance(value, str) and _FLOAT_TEXT.fullmatch(value.strip()):
            value = float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise _fail(key, "a number", value)
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise _fail(key, "a string", value)
        return value
    return value  # Any and other annotations are taken as they are


def _check_limits(owner: str, key: str, value: Any) -> None:
    limits = LIMITS.get(owner)
    if limits is None or value is None:
        return
    if all(isinstance(c, str) for c in limits):
        if str(value).lower() not in limits:
            raise ValueError(f"{key}: expected one of {', '.join(limits)}, got {value!r}")
        return
    low, high, *closed = limits
    low_ok = value >= low if not closed or closed[0] else value > low
    if not low_ok or (high is not None and value > high):
        if high is None:
            bound = f">= {low}" if not closed or closed[0] else f"> {low}"
        else:
            bound = f"in [{low}, {high}]" if not closed or closed[0] else f"in ({low}, {high}]"
        raise ValueError(f"{key}: expected a value {bound}, got {value!r}")


def coerce(
    tp: Any, value: Any, key: str, owner: str, build: Callable[[type, dict[str, Any], str], Any],
) -> Any:
    """Check ``value`` against annotation ``tp`` and return it typed.

    Parameters
    ----------
    tp : type or annotation
        The field's resolved annotation.
    value : object
        Plain JSON/YAML data.
    key : str
        Dotted name of the setting, for messages (``"model.in_channels"``).
    owner : str
        ``"Class.field"``, the :data:`LIMITS` key.
    build : callable
        ``build(cls, data, prefix)`` makes a nested dataclass (``from_dict`` with a key prefix).

    Raises
    ------
    ValueError
        One line naming ``key``: wrong type, out of range, or not one of the choices.
    """
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None and len(args) < len(typing.get_args(tp)):
            return None
        return coerce(args[0], value, key, owner, build) if len(args) == 1 else value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        shorthand = getattr(tp, "SHORTHAND", None)
        if shorthand and isinstance(value, str):
            return build(tp, {shorthand: value}, key)
        if not isinstance(value, dict):
            raise _fail(key, f"a mapping of {tp.__name__} settings", value)
        return build(tp, value, key)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise _fail(key, "a list", value)
        (item,) = typing.get_args(tp) or (Any,)
        return [coerce(item, v, f"{key}[{i}]", owner, build) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise _fail(key, "a mapping", value)
        return dict(value)
    if value is None:
        raise _fail(key, {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(tp, "a value"), value)
    value = _scalar(tp, key, value)
    if not isinstance(value, (list, dict)):
        _check_limits(owner, key, value)
    return value
