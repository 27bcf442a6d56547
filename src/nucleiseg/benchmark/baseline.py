"""The naive baseline every speed figure is a ratio against: the seed work's pipeline.

PyTorch eager in float32, the whole image in one forward pass (no tiling, no size estimate),
a 0.5 threshold of the foreground probability and connected components
(``skimage.measure.label``) instead of the watershed, measurements with plain
``regionprops_table``, and the label TIFF + CSV written like ``nucleiseg segment --measure``.
It runs as its own command, so the benchmark times it as users would feel it::

    python -m nucleiseg.benchmark.baseline IMAGE_OR_FOLDER [...] -o OUT [--model default]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["BaselineStep", "main"]


class BaselineStep:
    """``step(path, out_dir) -> (seconds per stage, labels)`` for the naive pipeline.

    Stages: ``read``, ``normalize``, ``predict`` (whole image), ``postprocess`` (threshold and
    connected components), ``write`` (measurements with ``regionprops_table``, label TIFF, CSV).
    """

    def __init__(self, model: str | Path = "default") -> None:
        from nucleiseg.bundle import ModelBundle
        from nucleiseg.inference.predictors import torch_predictor
        from nucleiseg.training.checkpoint import load_model

        bundle = ModelBundle.open(model)
        self.config = bundle.config
        self.predict = torch_predictor(load_model(bundle.config.model, bundle.weights_file()))

    def __call__(self, path: Path, out_dir: Path, name: str | None = None, measure: bool = True) -> tuple[dict[str, float], np.ndarray]:
        """Segment one file into ``out_dir`` as ``<name>_masks.tif`` (default: the file's stem), with its measurements CSV."""
        from skimage.measure import label as connected_components

        from nucleiseg.io.images import read_image, write_labels
        from nucleiseg.io.layout import output_name
        from nucleiseg.io.outputs import measure_regionprops, write_measurements
        from nucleiseg.transforms.normalize import normalize_image

        times: dict[str, float] = {}
        t = time.perf_counter()
        image = read_image(path)
        times["read"], t = time.perf_counter() - t, time.perf_counter()
        norm = normalize_image(image, self.config.normalize)
        times["normalize"], t = time.perf_counter() - t, time.perf_counter()
        probs = self.predict(norm.transpose(2, 0, 1)[None])[0]  # the model pads to its stride itself
        times["predict"], t = time.perf_counter() - t, time.perf_counter()
        labels = connected_components(probs[0] > 0.5, connectivity=1).astype(np.int32)
        times["postprocess"], t = time.perf_counter() - t, time.perf_counter()
        stem = name or Path(path).stem
        if measure:
            write_measurements(out_dir / output_name(stem, "measurements"), measure_regionprops(labels, image))
        write_labels(out_dir / output_name(stem, "masks"), labels)
        times["write"] = time.perf_counter() - t
        return times, labels


def main(argv: Sequence[str] | None = None) -> int:
    """Run the baseline over files and folders (found as ``nucleiseg segment`` finds them)."""
    from nucleiseg.io.labels import discover_inputs

    p = argparse.ArgumentParser(prog="python -m nucleiseg.benchmark.baseline", description=__doc__.splitlines()[0])
    p.add_argument("inputs", nargs="+")
    p.add_argument("-o", "--out", required=True)
    p.add_argument("--model", default="default")
    p.add_argument("--no-measure", action="store_true", help="write the label images only (no measurements CSV)")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    step = BaselineStep(args.model)
    items = discover_inputs([Path(x) for x in args.inputs])
    for item in items:
        step(item.image_path, out, item.id, measure=not args.no_measure)
    print(f"{len(items)} images segmented by the naive baseline")
    return 0


if __name__ == "__main__":
    sys.exit(main())
