"""``--resume``: which inputs still need segmenting. No Dask import, so the serial CLI can use it."""

from __future__ import annotations

from pathlib import Path

from nucleiseg.inference.batch import OutputOptions
from nucleiseg.io.labels import InputItem

__all__ = ["expected_outputs", "pending_items"]


def expected_outputs(item: InputItem, options: OutputOptions) -> list[str]:
    """File names :func:`write_outputs` always writes for ``item`` with ``options``.

    ``<id>_diff.png`` is left out: it is only written when ground truth of the same shape exists.
    """
    names = [f"{item.id}_masks.tif"]
    if options.png:
        names.append(f"{item.id}_masks.png")
    if options.overlay:
        names.append(f"{item.id}_overlay.png")
    if options.measure:
        names.append(f"{item.id}_measurements.csv")
    if options.rois:
        names.append(f"{item.id}_rois.zip")
    if options.geojson:
        names.append(f"{item.id}.geojson")
    return names


def _exists(out: Path, name: str) -> bool:
    """True when ``name`` is in ``out``; a stack's overlay is ``<id>_overlay.tif`` instead of ``.png``."""
    if (out / name).is_file():
        return True
    return name.endswith("_overlay.png") and (out / (name[: -len(".png")] + ".tif")).is_file()


def pending_items(items: list[InputItem], out_dir: str | Path, options: OutputOptions | None = None) -> list[InputItem]:
    """The items whose requested outputs are not all in ``out_dir`` yet (for ``--resume``).

    Outputs are written atomically, so a file that exists is complete: an image counts as done
    when every file of :func:`expected_outputs` exists. Works for the serial and the Dask path.
    """
    out = Path(out_dir)
    options = options or OutputOptions()
    return [item for item in items if not all(_exists(out, name) for name in expected_outputs(item, options))]
