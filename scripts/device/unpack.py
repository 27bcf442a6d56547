"""Turn a ``pack.py`` folder back into the usual layouts (on the GPU machine).

``python scripts/device/unpack.py .devpack_dsb DEST`` writes
``DEST/dsb2018/stage1_train/<id>/images/<id>.png`` and one binary mask PNG per nucleus
under ``<id>/masks/``; ``.devpack_bbbc039`` becomes ``DEST/bbbc039/{images,masks}/<name>.tif``.
``--check ROOT`` compares every unpacked image and label image with the originals under ROOT
(run here, where the originals are).
"""

from __future__ import annotations

import argparse
import json
import sys
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image


def _read(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


def _dsb_one(args: tuple[dict, Path, Path]) -> str:
    entry, pack, root = args
    sid, form = entry["id"], entry["form"]
    if form == "grey":
        image = np.repeat(_read(pack / f"{sid}.png")[..., None], 3, axis=2)
    elif form == "rgb":
        image = _read(pack / f"{sid}.webp")[..., :3]
    else:
        image = _read(pack / f"{sid}.png")
    assert list(image.shape) == entry["shape"], (sid, image.shape, entry["shape"])
    labels = _read(pack / f"{sid}.labels.png")
    (root / sid / "images").mkdir(parents=True, exist_ok=True)
    (root / sid / "masks").mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(image)).save(root / sid / "images" / f"{sid}.png", compress_level=1)
    for k in np.unique(labels[labels > 0]):
        mask = (labels == k).astype(np.uint8) * 255
        Image.fromarray(mask).save(root / sid / "masks" / f"{int(k):05d}.png", compress_level=1)
    return sid


def _bbbc_one(args: tuple[dict, Path, Path]) -> str:
    entry, pack, root = args
    image = _read(pack / f"{entry['id']}.png").astype(np.uint16) << entry["shift"]
    labels = _read(pack / f"{entry['id']}.labels.png").astype(np.uint16)
    tifffile.imwrite(root / "images" / entry["name"], image)
    tifffile.imwrite(root / "masks" / entry["name"], labels)
    return entry["id"]


def unpack(pack: Path, dest: Path, processes: int = 16) -> Path:
    """Unpack one part; returns the folder the trainer reads."""
    manifest = json.loads((pack / "manifest.json").read_text())
    if manifest["part"] == "dsb":
        root, fn = dest / "dsb2018" / "stage1_train", _dsb_one
    else:
        root, fn = dest / "bbbc039", _bbbc_one
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / "masks").mkdir(parents=True, exist_ok=True)
    root.mkdir(parents=True, exist_ok=True)
    with Pool(processes) as pool:
        done = pool.map(fn, [(e, pack, root) for e in manifest["entries"]], chunksize=2)
    print(f"{pack} -> {root}: {len(done)} images")
    return root


def check(unpacked: Path, originals: Path, part: str) -> int:
    """Compare unpacked images and labels with the originals; returns the number that differ."""
    from nucleiseg.io.dsb import load_sample
    from nucleiseg.io.images import read_image
    from nucleiseg.io.labels import discover_inputs, load_item_gt

    bad = 0
    if part == "dsb":
        for d in sorted(p for p in unpacked.iterdir() if p.is_dir()):
            a, b = load_sample(d, check=False), load_sample(originals / d.name, check=False)
            same = np.array_equal(a.image, b.image) and np.array_equal(a.labels, b.labels)
            bad += not same
    else:
        items = {it.id: it for it in discover_inputs(originals)}
        for it in discover_inputs(unpacked):
            o = items[it.id]
            same = np.array_equal(read_image(it.image_path), read_image(o.image_path))
            bad += not (same and np.array_equal(load_item_gt(it), load_item_gt(o)))
    return bad


def main(argv: list[str] | None = None) -> int:
    """Unpack (and optionally check) one part."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("pack", type=Path)
    p.add_argument("dest", type=Path)
    p.add_argument("--processes", type=int, default=16)
    p.add_argument("--check", type=Path, help="folder of the originals to compare with")
    args = p.parse_args(argv)
    root = unpack(args.pack, args.dest, args.processes)
    if args.check is not None:
        part = json.loads((args.pack / "manifest.json").read_text())["part"]
        bad = check(root, args.check, part)
        print(f"{bad} images differ from {args.check}")
        return 1 if bad else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
