"""Lazy package namespaces (PEP 562): a package names what it exports, the submodule is imported on first use.

Keeps ``import nucleiseg.<package>`` cheap, so a command imports only what it runs (no PyTorch,
albumentations or pandas on the segmenting path).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], Any], list[str]]:
    """``(__getattr__, __all__)`` for ``package`` whose names live in the submodules ``exports`` maps them to.

    Parameters
    ----------
    package : str
        The package's ``__name__``.
    exports : dict
        Exported name -> submodule, relative to ``package`` (``"watershed"``).
    """

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{exports[name]}"), name)

    return __getattr__, sorted(exports)
