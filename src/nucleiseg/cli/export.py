"""``nucleiseg export``: a trained model folder to ONNX (fp32, fp16 weights or int8), with a parity check."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``export`` sub-command."""
    p = sub.add_parser(
        "export",
        help="export a trained model to ONNX for fast CPU inference",
        description="Export a run folder (config.json + weights.safetensors) or a bundled model to ONNX "
        "with dynamic batch/height/width; the graph outputs probabilities. Afterwards the ONNX model is "
        "compared with PyTorch on random and real validation images (probability differences and "
        "competition scores). Use it with Segmenter.from_pretrained(folder, backend='onnx').",
    )
    p.add_argument("model", metavar="RUN_DIR|NAME", help="run folder or bundled model name")
    p.add_argument("--format", default="onnx", choices=["onnx", "bioimageio"],
                   help="export format (default onnx); bioimageio: a bioimage.io model package (.zip, spec 0.5) of the "
                   "folder's model.onnx for deepImageJ/Fiji and napari (needs nucleiseg[bioimageio])")
    precision = p.add_mutually_exclusive_group()
    precision.add_argument("--fp16", action="store_true", help="store weights as float16 (half the file size)")
    precision.add_argument("--int8", action="store_true", help="quantize to int8 (about a quarter of the size)")
    p.add_argument("--int8-mode", default="static", choices=["static", "dynamic"],
                   help="static: calibrated QDQ weights+activations (fast); dynamic: weights only, no data (slow on CPU)")
    p.add_argument("-o", "--out", help="output .onnx file (default: RUN_DIR/model.onnx, model.fp16.onnx or model.int8.onnx), "
                   "or the .zip of --format bioimageio (default: NAME.bioimageio.zip)")
    p.add_argument("--test-image", metavar="FILE", help="--format bioimageio: image for the package's test tensors and cover "
                   "(default examples/fluo_wide.png; cropped or padded to a valid input size)")
    p.add_argument("--calib-images", type=int, default=32, metavar="N", help="256x256 training crops for int8 calibration (default 32)")
    p.add_argument("--calib-source", metavar="DIR", help="DSB root or image folder for calibration (default: the run's training data)")
    p.add_argument("--check-images", metavar="DIR", help="images with ground truth for the parity check (default: the run's validation data)")
    p.add_argument("--check-count", type=int, default=3, metavar="N", help="real images in the parity check (default 3; 0 skips it)")
    p.add_argument("--check-max-side", type=int, default=512, metavar="PX",
                   help="central crop of each check image to at most PX pixels a side (default 512; 0: whole images)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--json", metavar="FILE", help="also write the parity report as JSON")
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    """Run ``nucleiseg export``."""
    from nucleiseg.export.onnx import check_parity, default_out_path, export_onnx, format_parity
    from nucleiseg.bundle import ModelBundle
    from nucleiseg.io.atomic import atomic_write_text

    if args.format == "bioimageio":
        import sys

        from nucleiseg.export.bioimageio import build_bioimageio

        target = Path(args.out) if args.out else Path(f"{Path(str(args.model)).name}.bioimageio.zip")
        try:
            path = build_bioimageio(args.model, target, args.test_image)
        except ImportError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB): bioimage.io model package")
        return 0
    if args.calib_images < 1:
        raise ValueError(f"--calib-images must be >= 1, got {args.calib_images}")
    folder = ModelBundle.open(args.model).folder
    if folder is None:
        raise ValueError(f"{args.model}: export needs a model folder (config.json and weights.safetensors)")
    out = Path(args.out) if args.out else default_out_path(folder, args.fp16, args.int8)
    path = export_onnx(
        folder, out, fp16=args.fp16, int8=args.int8, calib_images=args.calib_images, opset=args.opset,
        int8_mode=args.int8_mode, calib_source=args.calib_source,
    )
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    if args.check_count > 0:
        report = check_parity(folder, path, images=args.check_images, n_images=args.check_count, max_side=args.check_max_side or None)
        print(format_parity(report))
        if args.json:
            atomic_write_text(args.json, json.dumps(report, indent=2) + "\n")
    return 0
