"""The repository's example images as napari sample data (File > Open Sample > nucleiseg)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nucleiseg.io.images import read_image

__all__ = ["EXAMPLES", "brightfield", "fluo_small", "tissue_he"]

#: The examples folder of a source checkout (``pip install -e``); wheels do not carry it.
EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


def _load(name: str) -> list[tuple[Any, ...]]:
    path = EXAMPLES / f"{name}.png"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the example images come with the nucleiseg source tree (pip install -e .)")
    image = read_image(path)
    return [(image, {"name": name, "rgb": image.ndim == 3}, "image")]


def fluo_small() -> list[tuple[Any, ...]]:
    """The small fluorescence example (256 x 256)."""
    return _load("fluo_small")


def tissue_he() -> list[tuple[Any, ...]]:
    """The H&E tissue example."""
    return _load("tissue_he")


def brightfield() -> list[tuple[Any, ...]]:
    """The brightfield example."""
    return _load("brightfield")
