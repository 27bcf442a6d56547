"""The image sets of the accuracy suite, laid out on disk as folders ``nucleiseg segment`` reads.

Each set is a folder that both ``nucleiseg segment`` (inputs) and ``nucleiseg evaluate`` (ground
truth) understand, so the suite runs exactly the commands a user runs:

- ``val``: the 67 images of the DSB validation split (the bundled model's ``split.json``), as
  symbolic links to the DSB sample folders;
- ``val_x0.5``, ``val_x2``, ``val_x4``: the same images zoomed (bilinear) with their ground truth
  resized by nearest neighbour, written as ``images/<id>.png`` + ``masks/<id>.tif``; x0.5 uses all
  67 images, x2 and x4 fixed samples (:data:`ZOOMS`) chosen by :func:`~nucleiseg.io.splits.heldout_ids`;
- ``bbbc039_heldout``: the 40 BBBC039 images of the committed held-out list, as links;
- ``monuseg_test``: the 14 MoNuSeg H&E test images, read where they are (measuring only).

The zoomed sets are written once into a cache folder and reused while their manifest matches.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from nucleiseg.inference.scale import rescale_image, resize_labels
from nucleiseg.io.dsb import load_sample
from nucleiseg.io.images import read_image, write_image, write_labels
from nucleiseg.io.splits import bbbc039_heldout, heldout_ids
from nucleiseg.transforms import image_style_features

__all__ = ["ZOOMS", "SuiteSet", "image_kind", "prepare_sets", "validation_split_ids"]

#: Zoom factor -> number of validation images in that row (None = all), drawn with seed 2018.
ZOOMS: dict[float, int | None] = {0.5: None, 2.0: 32, 4.0: 12}
SAMPLE_SEED = 2018
_BUNDLED_SPLIT = Path(__file__).resolve().parents[1] / "weights" / "default" / "split.json"


@dataclass(frozen=True)
class SuiteSet:
    """One row of the suite: a folder of inputs with ground truth.

    Attributes
    ----------
    name : str
        Row key, e.g. ``"val_x2"``.
    group : str
        ``"validation"``, ``"zoom"``, ``"bbbc039"`` or ``"monuseg"``.
    description : str
        What the row holds, in words (for the tables).
    inputs : Path
        What ``nucleiseg segment`` is given.
    truth : Path
        What ``nucleiseg evaluate --gt`` is given.
    ids : tuple of str
        The image ids of the row.
    zoom : float
        Zoom applied to the images (1.0 = as published).
    """

    name: str
    group: str
    description: str
    inputs: Path
    truth: Path
    ids: tuple[str, ...]
    zoom: float = 1.0

    def to_json(self) -> dict[str, object]:
        """JSON-ready description (paths as strings)."""
        data = asdict(self)
        data.update(inputs=str(self.inputs), truth=str(self.truth), ids=list(self.ids))
        return data


def validation_split_ids(split_file: Path = _BUNDLED_SPLIT) -> list[str]:
    """The 67 DSB validation ids (thresholds and checkpoints are chosen on these only)."""
    return list(json.loads(Path(split_file).read_text())["val"])


def image_kind(image: np.ndarray) -> str:
    """``"tissue"`` (colour stain), ``"brightfield"`` (bright background) or ``"fluorescence"``.

    Uses the project's style features (:func:`nucleiseg.transforms.image_style_features`).
    """
    is_colour, _, _, bright = image_style_features(image)
    if is_colour:
        return "tissue"
    return "brightfield" if bright else "fluorescence"


def _link(target: Path, link: Path) -> None:
    """Make ``link`` a symbolic link to ``target`` (replacing a stale one)."""
    if link.is_symlink() or link.exists():
        if link.is_symlink() and Path(os.readlink(link)) == target:
            return
        link.unlink()
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target, target_is_directory=target.is_dir())


def _zoom_set(dsb: Path, ids: list[str], zoom: float, folder: Path, progress: bool) -> None:
    """Write zoomed images and nearest-neighbour ground truth once (reused while the manifest matches)."""
    manifest = {"zoom": zoom, "ids": ids, "source": str(dsb.resolve()), "version": 1}
    stamp = folder / "manifest.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == manifest:
        return
    for sample_id in tqdm(ids, desc=f"zoom x{zoom:g}", disable=not progress, leave=False):
        sample = load_sample(dsb / sample_id, check=False)
        image = rescale_image(sample.image, zoom)
        write_image(folder / "images" / f"{sample_id}.png", image)
        write_labels(folder / "masks" / f"{sample_id}.tif", resize_labels(sample.labels, image.shape[:2]))
    stamp.write_text(json.dumps(manifest, indent=2))


def prepare_sets(shared: Path, cache: Path, zooms: dict[float, int | None] | None = None,
                 progress: bool = True) -> list[SuiteSet]:
    """Lay out every set of the suite under ``cache`` and describe them.

    Parameters
    ----------
    shared : Path
        The ``shared/data`` folder (holding ``dsb2018/stage1_train`` and ``external/``).
    cache : Path
        Folder for links and zoomed copies (created).
    zooms : dict, optional
        Zoom -> sample size (default :data:`ZOOMS`).
    progress : bool
        Progress bars while writing zoomed images.

    Raises
    ------
    FileNotFoundError
        When a data folder is missing.
    """
    zooms = ZOOMS if zooms is None else zooms
    dsb = shared / "dsb2018" / "stage1_train"
    bbbc = shared / "external" / "bbbc039"
    monuseg = shared / "external" / "monuseg_test"
    for folder in (dsb, bbbc, monuseg):
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: data folder missing (the suite needs ../shared/data beside the repo)")
    ids = validation_split_ids()
    val_dir = cache / "val"
    for sample_id in ids:
        _link((dsb / sample_id).resolve(), val_dir / sample_id)
    sets = [SuiteSet("val", "validation", f"DSB validation split, {len(ids)} images, native", val_dir, val_dir, tuple(ids))]
    for zoom, n in zooms.items():
        chosen = ids if n is None or n >= len(ids) else heldout_ids(ids, n, SAMPLE_SEED)
        folder = cache / f"val_x{zoom:g}"
        _zoom_set(dsb, chosen, zoom, folder, progress)
        what = "all" if len(chosen) == len(ids) else f"a fixed sample of {len(chosen)} (seed {SAMPLE_SEED})"
        sets.append(SuiteSet(f"val_x{zoom:g}", "zoom", f"DSB validation images zoomed x{zoom:g}, {what}",
                             folder / "images", folder / "masks", tuple(chosen), zoom))
    held = bbbc039_heldout()
    held_dir = cache / "bbbc039_heldout"
    for name in held:
        _link((bbbc / "images" / f"{name}.tif").resolve(), held_dir / "images" / f"{name}.tif")
        _link((bbbc / "masks" / f"{name}.tif").resolve(), held_dir / "masks" / f"{name}.tif")
    sets.append(SuiteSet("bbbc039_heldout", "bbbc039", f"BBBC039 U2OS Hoechst, held-out list, {len(held)} images",
                         held_dir / "images", held_dir / "masks", tuple(held)))
    names = tuple(sorted(p.stem for p in (monuseg / "images").iterdir() if p.is_file()))
    sets.append(SuiteSet("monuseg_test", "monuseg", f"MoNuSeg 2018 test, H&E tissue, {len(names)} images (measuring only)",
                         monuseg / "images", monuseg / "masks", names))
    return sets


def kinds_of(folder: Path, ids: tuple[str, ...]) -> dict[str, str]:
    """Image kind of each DSB sample id under ``folder`` (see :func:`image_kind`)."""
    return {i: image_kind(read_image(folder / i / "images" / f"{i}.png")) for i in ids}
