"""``nucleiseg benchmark``: whole-pipeline CPU speed per stage, against the naive baseline."""

from __future__ import annotations

import argparse
import datetime as _dt
import json
from pathlib import Path


def _sizes(text: str) -> list[int]:
    """Parse ``"256,1024"`` into positive integers."""
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"sizes must be comma-separated integers, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"sizes must be positive integers, got {text!r}")
    return sizes


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``benchmark`` sub-command."""
    p = sub.add_parser(
        "benchmark",
        help="measure images/s and time per stage of the whole pipeline",
        description="Run the full pipeline (read, normalize, network or TTA, watershed, measurements, "
        "write) on real images cropped or mirror-tiled to each size, for each backend and for the naive "
        "baseline (PyTorch eager fp32, whole image, threshold + connected components) in the same run. "
        "Prints a table and writes JSON (default benchmarks/results/pipeline_<date>.json).",
    )
    p.add_argument("--images", nargs="+", metavar="PATH", help="image files/folders (default: examples/ or the DSB folder)")
    p.add_argument("--model", default="default", help="run folder or bundled model name (default: default)")
    p.add_argument("--backend", default="all", choices=["torch", "onnx", "onnx-int8", "onnx-fp16", "all"],
                   help="pipeline(s) besides the baseline; all = torch, onnx and onnx-int8 (default all)")
    p.add_argument("--sizes", type=_sizes, default=[256, 1024], help="square image sides, comma-separated (default 256,1024)")
    p.add_argument("--tta", action="store_true", help="also run every backend with 8-fold test-time augmentation")
    p.add_argument("--repeats", type=int, default=3, help="timed passes over the images; medians reported (default 3)")
    p.add_argument("--max-images", type=int, default=5, help="source images to use (default 5)")
    p.add_argument("--threads", type=int, help="intra-op threads for PyTorch and ONNX Runtime (default: library defaults)")
    p.add_argument("--workers", type=int, default=1,
                   help="also run each backend with N worker processes sharing the cores, as `segment --workers N` (default 1: off)")
    p.add_argument("--tile", type=int, help="tile side of the tiled pipelines (default: the model's)")
    p.add_argument("--profile", type=int, default=0, metavar="N", help="cProfile N images per configuration (default 0)")
    p.add_argument("--name", help="result name: writes benchmarks/results/pipeline_<name>.json")
    p.add_argument("-o", "--out", help="output JSON file (overrides --name)")
    p.set_defaults(func=cmd_benchmark)


def cmd_benchmark(args: argparse.Namespace) -> int:
    """Run ``nucleiseg benchmark``."""
    from nucleiseg.benchmark import format_table, run_benchmark
    from nucleiseg.io.atomic import atomic_write_text

    if args.repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {args.repeats}")
    if args.max_images < 1:
        raise ValueError(f"--max-images must be >= 1, got {args.max_images}")
    result = run_benchmark(
        images=args.images, model=args.model, backends=args.backend, sizes=args.sizes, tta=args.tta,
        repeats=args.repeats, max_images=args.max_images, threads=args.threads, profile=args.profile,
        tile=args.tile, workers=args.workers,
    )
    name = args.name or _dt.datetime.now().strftime("%Y%m%d-%H%M")
    out = Path(args.out) if args.out else Path("benchmarks") / "results" / f"pipeline_{name}.json"
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    print(format_table(result))
    for key, lines in result.get("profile", {}).items():
        print(f"\nprofile {key} (by own time)")
        print("\n".join(lines))
    print(f"wrote {out}")
    return 0
