"""Which output files a batch writes for each image, and their names: the one place they are spelled.

:class:`OutputOptions` says which outputs were asked for; :class:`OutputLayout` turns an item id
into file names for them (a 2-D image, a T/Z stack or a block-wise ``.zarr`` label image). The
writers (:func:`nucleiseg.inference.item.write_outputs`,
:func:`nucleiseg.inference.stack.write_stack_outputs`, the block-wise strategy) and ``--resume``
(:meth:`OutputLayout.pending`) all ask the layout, so they cannot disagree.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from nucleiseg.io.captured import captured

__all__ = ["SUFFIXES", "OutputLayout", "OutputOptions", "intact", "output_name"]

#: Suffix of each kind of output, appended to the item id.
SUFFIXES = {
    "masks": "_masks.tif",
    "masks_png": "_masks.png",
    "overlay": "_overlay.png",
    "overlay_stack": "_overlay.tif",
    "diff": "_diff.png",
    "measurements": "_measurements.csv",
    "geojson": ".geojson",
    "rois": "_rois.zip",
    "zarr": "_masks.zarr",
}

#: The record of a whole run, beside the per-image outputs.
RUN_RECORD = "run.json"

Item = TypeVar("Item")


def output_name(item_id: str, kind: str) -> str:
    """File name of output ``kind`` (a key of :data:`SUFFIXES`) of ``item_id``.

    Raises
    ------
    KeyError
        For an unknown kind, with the known ones in the message.
    """
    if kind not in SUFFIXES:
        raise KeyError(f"unknown output kind {kind!r} (known: {', '.join(SUFFIXES)})")
    return f"{item_id}{SUFFIXES[kind]}"


def _tiff_intact(path: Path, size: int) -> bool:
    """Every page's image data lies inside the file (a truncated TIFF fails this)."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        if not tif.pages:
            return False
        for page in tif.pages:
            ends = [o + c for o, c in zip(page.dataoffsets, page.databytecounts, strict=False)]
            if not ends or max(ends) > size:
                return False
    return True


def _png_intact(path: Path, size: int) -> bool:
    """The PNG signature at the start and the IEND chunk at the end."""
    with open(path, "rb") as fh:
        head = fh.read(8)
        fh.seek(max(0, size - 12))
        tail = fh.read(12)
    return head == b"\x89PNG\r\n\x1a\n" and tail[4:8] == b"IEND"


def intact(path: str | Path, full: bool = False) -> bool:
    """True when an output file looks complete: a cheap check of its size and header.

    ``.tif``: every page's data inside the file; ``.png``: signature and end chunk; ``.zip``:
    its central directory; ``.zarr``: a folder with array metadata; other files: not empty.
    ``full`` decodes label images completely instead (slower, catches corrupt data too).
    """
    path = Path(path)
    with captured():  # a damaged file makes the readers log errors: the answer is enough
        return _intact(path, path.suffix.lower(), full)


def _intact(path: Path, suffix: str, full: bool) -> bool:
    try:
        if suffix == ".zarr":
            return path.is_dir() and any((path / n).is_file() for n in (".zarray", "zarr.json"))
        size = path.stat().st_size
        if not path.is_file() or size == 0:
            return False
        if full and suffix in (".tif", ".png") and path.name.endswith(("_masks.tif", "_masks.png")):
            from nucleiseg.io.images import read_labels

            read_labels(path)
            return True
        if suffix == ".tif":
            return _tiff_intact(path, size)
        if suffix == ".png":
            return _png_intact(path, size)
        if suffix == ".zip":
            import zipfile

            return zipfile.is_zipfile(path)
    except Exception:  # noqa: BLE001 - unreadable in any way: not intact
        return False
    return True


@dataclass
class OutputOptions:
    """Which files to write for each image (``<id>_masks.tif`` is always written).

    ``geojson`` writes ``<id>.geojson`` (QuPath detections with measurements). ``channel`` and
    ``axes`` say how to read multi-channel images and stacks (:func:`nucleiseg.io.stacks.read_planes`):
    the nuclear channel (index or metadata name) and the axis letters of files without metadata.
    ``pixel_size`` (µm per pixel) overrides the files' own; ``diameter_um`` is a nucleus diameter
    in µm, turned into pixels per image with its pixel size (:mod:`nucleiseg.io.units`).
    """

    png: bool = False
    overlay: bool = False
    measure: bool = False
    rois: bool = False
    rle: str | None = None
    geojson: bool = False
    channel: int | str | None = None
    axes: str | None = None
    pixel_size: float | None = None
    diameter_um: float | None = None


@dataclass(frozen=True)
class OutputLayout:
    """Names of every output of an item in ``out_dir`` for ``options``.

    Parameters
    ----------
    out_dir : Path
        The output folder.
    options : OutputOptions
        The outputs asked for.
    blockwise : bool
        Images are segmented block-wise: the labels go to ``<id>_masks.zarr`` and nothing else
        is written.
    """

    out_dir: Path
    options: OutputOptions
    blockwise: bool = False

    @classmethod
    def of(cls, out_dir: str | Path, options: OutputOptions | None = None, blockwise: bool = False) -> OutputLayout:
        """A layout with default options when none are given."""
        return cls(Path(out_dir), options or OutputOptions(), blockwise)

    def name(self, item_id: str, kind: str) -> str:
        """File name of output ``kind`` of ``item_id`` (see :data:`SUFFIXES`)."""
        return output_name(item_id, kind)

    def path(self, item_id: str, kind: str) -> Path:
        """Path of output ``kind`` of ``item_id`` in the output folder."""
        return self.out_dir / output_name(item_id, kind)

    @property
    def record_path(self) -> Path:
        """``OUT/run.json``."""
        return self.out_dir / RUN_RECORD

    def masks_path(self, item_id: str) -> Path:
        """The label image of ``item_id`` (``.tif``, or ``.zarr`` block-wise)."""
        return self.path(item_id, "zarr" if self.blockwise else "masks")

    def kinds(self, stack: bool = False) -> list[str]:
        """Output kinds always written for an image (``stack``: a T/Z stack), in writing order.

        ``diff`` is left out: it is only written when ground truth of the same shape exists.
        """
        if self.blockwise:
            return ["zarr"]
        opts = self.options
        kinds = ["masks"]
        if opts.png and not stack:
            kinds.append("masks_png")
        if opts.overlay:
            kinds.append("overlay_stack" if stack else "overlay")
        if opts.measure:
            kinds.append("measurements")
        if opts.geojson:
            kinds.append("geojson")
        if opts.rois:
            kinds.append("rois")
        return kinds

    def expected(self, item_id: str, stack: bool = False) -> list[str]:
        """File names always written for ``item_id`` (see :meth:`kinds`)."""
        return [output_name(item_id, kind) for kind in self.kinds(stack)]

    def is_done(self, item_id: str, full: bool = False) -> bool:
        """True when every output of ``item_id`` exists and looks complete (:func:`intact`), as a 2-D image or as a stack.

        Outputs are written atomically (the ``.zarr`` folder is renamed into place once
        complete), so a damaged one was damaged afterwards (a copy cut short, a full disk
        elsewhere); ``full`` decodes the label images completely.
        """
        if self.blockwise:
            return intact(self.masks_path(item_id))
        forms = (False,) if self.options.png else (False, True)  # a stack is never written as PNG
        return any(
            all((self.out_dir / n).is_file() for n in self.expected(item_id, stack))
            and all(intact(self.out_dir / n, full) for n in self.expected(item_id, stack))
            for stack in forms
        )

    def pending(self, items: Iterable[Item], full: bool = False) -> list[Item]:
        """The items (anything with an ``id``) whose outputs are not all in the folder yet, or not intact."""
        return [item for item in items if not self.is_done(item.id, full)]  # type: ignore[attr-defined]
