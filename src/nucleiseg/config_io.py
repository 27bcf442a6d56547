"""Configuration dataclasses to and from plain data: dicts, JSON files and YAML recipes.

:func:`from_dict` builds a (nested) config dataclass from plain JSON/YAML data and checks every
key against the field's type and limits (:mod:`nucleiseg.config_check`); :func:`to_dict` is its
inverse. :func:`save_json` and :func:`load_json` write and read a config as a JSON file (written
atomically). The dataclasses themselves are in :mod:`nucleiseg.config`, where these functions are
imported from as well.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["from_dict", "load_json", "save_json", "to_dict"]

T = TypeVar("T")


def to_dict(obj: Any) -> dict[str, Any]:
    """Convert a (nested) config dataclass to a JSON-ready dict."""
    return dataclasses.asdict(obj)


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Build dataclass ``cls`` from plain JSON/YAML data, checking every key.

    Each value must fit its field's type and, where :data:`nucleiseg.config_check.LIMITS` names
    the field, its range or choices; nested sections are checked the same way.

    Raises
    ------
    ValueError
        One line naming the (dotted) key: an unknown key, a value of the wrong type
        (``epochs: expected an integer, got 'ten'``) or out of range.
    """
    return _build(cls, data, "")


def _build(cls: type[T], data: Any, prefix: str) -> T:
    from nucleiseg.config_check import coerce

    where = f"{prefix}: " if prefix else ""
    if not isinstance(data, dict):
        raise ValueError(f"{where}expected a mapping of {cls.__name__} settings, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = set(map(str, data)) - names
    if unknown:
        keys = ", ".join(f"{prefix}.{k}" if prefix else k for k in sorted(unknown))
        raise ValueError(f"unknown {cls.__name__} option(s): {keys}")
    kwargs = {
        k: coerce(hints[k], v, f"{prefix}.{k}" if prefix else k, f"{cls.__name__}.{k}", _build)
        for k, v in data.items()
    }
    return cls(**kwargs)


def save_json(obj: Any, path: str | Path) -> None:
    """Write a config dataclass as indented JSON, atomically."""
    from nucleiseg.io.atomic import atomic_write_text

    atomic_write_text(path, json.dumps(to_dict(obj), indent=2, sort_keys=True) + "\n")


def load_json(cls: type[T], path: str | Path) -> T:
    """Read a config dataclass of type ``cls`` from a JSON file."""
    with open(path, encoding="utf-8") as fh:
        return from_dict(cls, json.load(fh))
