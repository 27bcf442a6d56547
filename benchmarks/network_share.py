"""Where the default command's time goes: the network's share, and the pixels it sees per stage.

Runs :meth:`Segmenter.segment` (what ``nucleiseg segment`` runs per image) over the model's
67 DSB validation images as they are, in process, one image at a time on one thread, with the
predictor wrapped to count every network call: its stage (``estimate``: the size probe, whose
zoom-1 pass of a small image is handed on as the segmentation's; ``predict``: native passes of
larger images and rescaled passes), the pixels it saw (padded to the stride) and its seconds.
The images' own pixels (padded to the stride, what one native pass each would cost) are the
reference. One run, medians are not needed: the shares, not the seconds, are the result::

    python benchmarks/network_share.py        # writes results/network_share.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from nucleiseg.benchmark.images import validation_set
from nucleiseg.bundle import ModelBundle
from nucleiseg.inference.segmenter import Segmenter
from nucleiseg.io.images import read_image
from nucleiseg.io.labels import discover_inputs

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    """Measure and write the JSON; print a summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--out", type=Path, default=RESULTS / "network_share.json")
    args = parser.parse_args(argv)

    seg = Segmenter.from_pretrained(args.model, threads=1)
    stride = seg.stride
    network = seg.predictor
    assert network is not None
    calls: list[tuple[str, int, float]] = []
    stage = ["predict"]

    def counted(batch: np.ndarray) -> np.ndarray:
        t = time.perf_counter()
        out = network(batch)
        calls.append((stage[0], int(batch.shape[0] * batch.shape[2] * batch.shape[3]), time.perf_counter() - t))
        return out

    def estimate(*a: object, **k: object):  # type: ignore[no-untyped-def]
        stage[0] = "estimate"
        try:
            return Segmenter.estimate_size(seg, *a, **k)  # type: ignore[arg-type]
        finally:
            stage[0] = "predict"

    seg.predictor = counted
    seg.estimate_size = estimate  # type: ignore[method-assign]
    with tempfile.TemporaryDirectory(prefix="nucleiseg-share-") as tmp:
        folder = validation_set(ModelBundle.open(args.model).folder, Path(tmp))
        if folder is None:
            print("error: the model's validation images are not here", file=sys.stderr)
            return 1
        items = discover_inputs([folder])
        own = 0
        rescaled = 0
        t0 = time.perf_counter()
        for item in items:
            image = read_image(item.image_path)
            h, w = image.shape[:2]
            own += (-(-h // stride) * stride) * (-(-w // stride) * stride)
            rescaled += seg.segment(image, keep_probabilities=False).scale != 1.0
        total = time.perf_counter() - t0
    by_stage = {
        name: {"calls": sum(1 for c in calls if c[0] == name), "megapixels": round(sum(c[1] for c in calls if c[0] == name) / 1e6, 2),
               "seconds": round(sum(c[2] for c in calls if c[0] == name), 2)}
        for name in ("estimate", "predict")
    }
    network_s = sum(c[2] for c in calls)
    result = {
        "command": "python benchmarks/network_share.py" + (f" --model {args.model}" if args.model != "default" else ""),
        "model": args.model, "images": len(items), "rescaled": int(rescaled),
        "images_megapixels": round(own / 1e6, 2), "network": by_stage,
        "network_megapixels": round(sum(c[1] for c in calls) / 1e6, 2),
        "network_seconds": round(network_s, 2), "total_seconds": round(total, 2),
        "network_share": round(network_s / total, 3),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
