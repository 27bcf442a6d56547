"""nucleiseg: find every cell nucleus in 2D microscopy images.

The public API, imported lazily so ``import nucleiseg`` stays fast:

- :class:`Segmenter` — load a model (``Segmenter.from_pretrained("default")``) and segment arrays;
- :func:`segment` — one image array to instance labels;
- :func:`create_model` — build a U-Net family network by name;
- :func:`score` — the DSB 2018 competition score of one predicted label image.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "Segmenter": ("nucleiseg.inference.segmenter", "Segmenter"),
    "segment": ("nucleiseg.api", "segment"),
    "create_model": ("nucleiseg.models", "create_model"),
    "score": ("nucleiseg.metrics", "competition_score"),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'nucleiseg' has no attribute {name!r}")
