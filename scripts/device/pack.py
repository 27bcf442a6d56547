"""Pack the training data small enough to travel to a lent GPU machine (64 MiB with the repo).

The GPU machine sees only the repository, not ``../shared``. This writes ``.devpack_dsb/`` (every
DSB stage1_train image, the validation split too: the trainer splits by id) and
``.devpack_bbbc039/`` (the training part of BBBC039), both ignored by git, which ``unpack.py``
turns back into the usual layouts there. Each part travels in its own call (together they
are over the limit), the BBBC039 part first.

- DSB images are stored losslessly as the RGB arrays the trainer reads: grey PNG where
  R = G = B (most fluorescence), lossless WebP for the other colour images; ``unpack.py``
  rebuilds the exact arrays. Each image's masks are stored as one 16-bit label PNG.
- BBBC039's 16-bit images are stored as 16-bit PNG (``--bbbc-shift`` N rounds them to multiples
  of 2**N ADU first; default 0, lossless), its labels exactly. Its held-out images are left out.

Usage: ``python scripts/device/pack.py dsb`` and ``python scripts/device/pack.py bbbc039``
(a few minutes on 2 cores), then carry the folder. ``--shard K/N`` writes every N-th image
from the K-th into ``.devpack_<part>_KofN`` (a part too large for one call travels as N shards,
one per call, all unpacked into the same place; ``run.py`` trains only when every DSB image is
there, since a partial set would change the validation split).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image

from nucleiseg.io.dsb import list_samples, load_sample
from nucleiseg.io.images import read_image
from nucleiseg.io.labels import discover_inputs, load_item_gt
from nucleiseg.io.splits import bbbc039_heldout


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _dsb_one(args: tuple[Path, Path]) -> dict:
    sample_dir, out = args
    sample = load_sample(sample_dir, check=False)
    image = read_image(sample.image_path)  # the array the trainer reads
    entry = {"id": sample.id, "shape": list(image.shape), "dtype": str(image.dtype)}
    rgb8 = image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8
    if rgb8 and (image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all():
        entry["form"] = "grey"
        (out / f"{sample.id}.png").write_bytes(_png(np.ascontiguousarray(image[..., 0])))
    elif rgb8:
        entry["form"] = "rgb"
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="WEBP", lossless=True, quality=100, method=4)
        (out / f"{sample.id}.webp").write_bytes(buf.getvalue())
    else:
        entry["form"] = "exact"
        (out / f"{sample.id}.png").write_bytes(_png(image))
    if int(sample.labels.max()) >= 2**16:
        raise ValueError(f"{sample.id}: more than 65535 nuclei")
    (out / f"{sample.id}.labels.png").write_bytes(_png(sample.labels.astype(np.uint16)))
    return entry


def _bbbc_one(args: tuple[object, Path, int]) -> dict:
    item, out, shift = args
    image = read_image(item.image_path)
    labels = load_item_gt(item)
    assert labels is not None and image.dtype == np.uint16
    rounded = ((image.astype(np.uint32) + (1 << shift >> 1)) >> shift).clip(0, 65535 >> shift).astype(np.uint16)
    (out / f"{item.id}.png").write_bytes(_png(rounded))
    (out / f"{item.id}.labels.png").write_bytes(_png(labels.astype(np.uint16)))
    return {"id": item.id, "name": item.image_path.name, "shift": shift}


def main(argv: list[str] | None = None) -> int:
    """Write ``.devpack/`` from the shared data folders."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("part", choices=["dsb", "bbbc039"])
    p.add_argument("--dsb", default="../shared/data/dsb2018/stage1_train")
    p.add_argument("--bbbc", default="../shared/data/external/bbbc039")
    p.add_argument("--bbbc-shift", type=int, default=0)
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--shard", default="1/1", help="K/N: the K-th of N interleaved shards (default 1/1: all)")
    args = p.parse_args(argv)
    k, n = (int(v) for v in args.shard.split("/"))
    if not 1 <= k <= n:
        p.error(f"--shard {args.shard}: need 1 <= K <= N")
    out = Path(f".devpack_{args.part}" if n == 1 else f".devpack_{args.part}_{k}of{n}")
    out.mkdir(parents=True, exist_ok=True)
    with Pool(args.processes) as pool:
        if args.part == "dsb":
            items = list_samples(args.dsb)
            entries = pool.map(_dsb_one, [(d, out) for d in items[k - 1::n]], chunksize=4)
        else:
            held = set(bbbc039_heldout())
            items = [it for it in discover_inputs(args.bbbc) if it.image_path.stem not in held and it.id not in held]
            entries = pool.map(_bbbc_one, [(it, out, args.bbbc_shift) for it in items[k - 1::n]], chunksize=4)
    manifest = {"part": args.part, "total": len(items), "entries": entries}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=0))
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"{out}: {len(entries)} images, {size / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
