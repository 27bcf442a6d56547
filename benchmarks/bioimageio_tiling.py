"""Seams of tiled bioimage.io prediction: the package's halo against a small one.

Builds the bioimage.io package of a model twice (the project's halo, half of nucleiseg's tile
overlap, and ``--small-halo`` pixels), predicts an example with bioimage.io's own runner
(``bioimageio.core.predict``) whole and in blocks of ``--block`` pixels, and prints how far the
tiled foreground probabilities are from the whole-image ones. Run:
``python benchmarks/bioimageio_tiling.py`` (needs ``nucleiseg[bioimageio]`` and ``bioimageio.core``).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def tiled_vs_whole(package: Path, raw: np.ndarray, block: int) -> np.ndarray:
    """``|tiled - whole|`` foreground probability, blocks of ``block`` pixels (y and x)."""
    from bioimageio.core import load_model_description, predict
    from bioimageio.spec.model.v0_5 import AxisId, TensorId

    descr = load_model_description(package, perform_io_checks=False)
    key, inp = TensorId("probabilities"), TensorId("input")
    whole = predict(model=descr, inputs=raw).members[key].data.to_numpy()
    shape = {inp: {AxisId("batch"): 1, AxisId("channel"): raw.shape[1], AxisId("y"): block, AxisId("x"): block}}
    tiled = predict(model=descr, inputs=raw, input_block_shape=shape).members[key].data.to_numpy()
    return np.abs(tiled - whole)[0, 0]


def main() -> None:
    """Build both packages, predict, print one line per halo."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--image", default=str(REPO / "examples" / "fluo_wide.png"))
    parser.add_argument("--block", type=int, default=512, help="block side in pixels (default 512)")
    parser.add_argument("--small-halo", type=int, default=8, help="the halo to compare with (default 8)")
    args = parser.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")
    warnings.simplefilter("ignore")
    from nucleiseg.export.bioimageio import build_bioimageio, fit_test_image
    from nucleiseg.io import read_image

    image = read_image(args.image)
    image = image[..., :3] if image.ndim == 3 else np.repeat(image[..., None], 3, axis=2)
    raw = np.moveaxis(fit_test_image(image, args.block, 32).astype(np.float32), -1, 0)[None]
    with tempfile.TemporaryDirectory() as tmp:
        for label, halo in (("project halo", None), ("small halo", args.small_halo)):
            package = build_bioimageio(args.model, Path(tmp) / f"{halo}.zip", halo=halo)
            diff = tiled_vs_whole(package, raw, args.block)
            print(f"{label} ({'default' if halo is None else halo}): image {diff.shape}, blocks {args.block} px: "
                  f"max |tiled - whole| {diff.max():.4f}, mean {diff.mean():.6f}, pixels off by > 0.05: {(diff > 0.05).mean():.4%}")


if __name__ == "__main__":
    main()
