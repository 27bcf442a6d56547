"""nucleiseg: find every cell nucleus in 2D microscopy images."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
