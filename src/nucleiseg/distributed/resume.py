"""``--resume``: which inputs still need segmenting (asks :class:`~nucleiseg.io.layout.OutputLayout`; no Dask import)."""

from __future__ import annotations

from pathlib import Path

from nucleiseg.io.labels import InputItem
from nucleiseg.io.layout import OutputLayout, OutputOptions

__all__ = ["expected_outputs", "pending_items"]


def expected_outputs(item: InputItem, options: OutputOptions) -> list[str]:
    """File names always written for a 2-D image ``item`` with ``options`` (:meth:`OutputLayout.expected`)."""
    return OutputLayout.of(".", options).expected(item.id)


def pending_items(items: list[InputItem], out_dir: str | Path, options: OutputOptions | None = None) -> list[InputItem]:
    """The items whose requested outputs are not all in ``out_dir`` yet (:meth:`OutputLayout.pending`)."""
    return OutputLayout.of(out_dir, options).pending(items)
