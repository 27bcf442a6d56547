"""Network time of ONNX forms of one model on the DSB validation images as they are.

Each image of the model's validation split (``split.json`` "val") is read and normalised as
``nucleiseg segment`` does (:meth:`Segmenter.normalize`), padded to the model's stride, and
predicted whole by every given ONNX file in turn (:class:`nucleiseg.export.runtime.OrtPredictor`,
the predictor ``nucleiseg segment`` runs), one ONNX Runtime thread each. The files take turns
image by image, ``--repeats`` rounds over the split; the figure per file is the median over
rounds of its total seconds, and its ratio to the first file's in the same rounds. Outputs are
compared too (largest absolute probability difference to the first file)::

    python benchmarks/onnx_forms_speed.py BEFORE.onnx AFTER.onnx [--model default] [--repeats 3]

Results: ``benchmarks/results/onnx_forms_speed.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from nucleiseg.bundle import ModelBundle
from nucleiseg.export.runtime import onnx_predictor
from nucleiseg.inference.segmenter import Segmenter
from nucleiseg.io.atomic import atomic_write_text
from nucleiseg.io.dsb import load_sample

DSB_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "dsb2018" / "stage1_train"
OUT = Path(__file__).resolve().parent / "results" / "onnx_forms_speed.json"


def padded_input(seg: Segmenter, image: np.ndarray) -> np.ndarray:
    """``(1, C, h, w)`` network input of a whole image, sides padded (reflect) to the stride."""
    norm = seg.normalize(image).transpose(2, 0, 1)
    h, w = norm.shape[1:]
    ph, pw = -h % seg.stride, -w % seg.stride
    return np.pad(norm, ((0, 0), (0, ph), (0, pw)), mode="reflect")[None]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("files", nargs="+", type=Path, help="ONNX files; the first is the reference")
    ap.add_argument("--model", default="default", help="bundled model or run folder whose validation split is used")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)

    bundle = ModelBundle.open(args.model)
    assert bundle.folder is not None
    seg = Segmenter.from_pretrained(bundle.folder)
    ids = json.loads((bundle.folder / "split.json").read_text())["val"]
    inputs = [padded_input(seg, load_sample(DSB_ROOT / i, check=False).image) for i in ids]
    predictors = [onnx_predictor(f, threads=1) for f in args.files]
    for p in predictors:  # warm-up
        p(inputs[0])
    totals = [[0.0] * args.repeats for _ in predictors]
    max_diff = [0.0] * len(predictors)
    for r in range(args.repeats):
        for x in inputs:
            outs = []
            for k, p in enumerate(predictors):
                t = time.perf_counter()
                outs.append(p(x))
                totals[k][r] += time.perf_counter() - t
            for k, o in enumerate(outs):
                max_diff[k] = max(max_diff[k], float(np.abs(o - outs[0]).max()))
    rows = []
    for k, f in enumerate(args.files):
        ratios = [totals[k][r] / totals[0][r] for r in range(args.repeats)]
        rows.append({"file": str(f), "seconds": round(statistics.median(totals[k]), 3), "runs": [round(t, 3) for t in totals[k]],
                     "ratio_to_first": round(statistics.median(ratios), 3), "max_abs_diff_to_first": max_diff[k]})
        print(f"{str(f):60s} {rows[-1]['seconds']:7.2f} s  x{rows[-1]['ratio_to_first']:.3f}  max diff {max_diff[k]:.2e}")
    report = {"command": "python benchmarks/onnx_forms_speed.py " + " ".join(map(str, args.files)),
              "model": args.model, "images": len(inputs), "threads": 1, "repeats": args.repeats, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
