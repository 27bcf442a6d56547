"""``nucleiseg benchmark``: speed of ``nucleiseg segment`` per stage and as a whole command, against the naive baseline."""

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
    from nucleiseg.inference.predictors import BACKENDS

    p = sub.add_parser(
        "benchmark",
        help="measure images/s of nucleiseg segment per stage and as a whole command, against the naive baseline",
        description="Time the per-image step of `nucleiseg segment` stage by stage (read, normalize, size estimate, "
        "predict, postprocess, write) and the whole command as a fresh process (start-up and model load included), "
        "for each backend and for the naive baseline (PyTorch eager fp32, whole image, threshold + connected "
        "components) in the same run, on real images: by default the model's DSB validation split as it is and "
        "examples/. Prints a table and writes JSON (default benchmarks/results/pipeline_<date>.json).",
    )
    p.add_argument("--images", nargs="+", metavar="FOLDER", help="image folders, one set each (default: the validation split and examples/)")
    p.add_argument("--model", default="default", help="run folder or bundled model name (default: default)")
    p.add_argument("--backend", nargs="+", default=["auto", "torch"], choices=list(BACKENDS),
                   help="pipelines besides the baseline (default: auto torch; auto is what `nucleiseg segment` runs)")
    p.add_argument("--repeats", type=int, default=3, help="timed passes and command runs; medians reported (default 3)")
    p.add_argument("--threads", type=int, help="intra-op threads of the network runtimes (default: library defaults)")
    p.add_argument("--sizes", type=_sizes, default=[], help="extra sets: square crops of these sides, e.g. 256,1024")
    p.add_argument("--max-images", type=int, help="validation images to use (default: all)")
    p.add_argument("--data", help="DSB folder of the validation split (default: the model's training data)")
    p.add_argument("--no-command", action="store_true", help="skip the whole-command timings")
    p.add_argument("--name", help="result name: writes benchmarks/results/pipeline_<name>.json")
    p.add_argument("-o", "--out", help="output JSON file (overrides --name)")
    p.set_defaults(func=cmd_benchmark)


def cmd_benchmark(args: argparse.Namespace) -> int:
    """Run ``nucleiseg benchmark``."""
    from nucleiseg.benchmark import format_table, run_benchmark
    from nucleiseg.io.atomic import atomic_write_text

    if args.max_images is not None and args.max_images < 1:
        raise ValueError(f"--max-images must be >= 1, got {args.max_images}")
    result = run_benchmark(
        images=args.images, model=args.model, backends=args.backend, repeats=args.repeats, threads=args.threads,
        sizes=args.sizes, max_images=args.max_images, command=not args.no_command, data=args.data,
    )
    name = args.name or _dt.datetime.now().strftime("%Y%m%d-%H%M")
    out = Path(args.out) if args.out else Path("benchmarks") / "results" / f"pipeline_{name}.json"
    result["command"] = "nucleiseg benchmark " + " ".join(_argv(args))
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    print(format_table(result))
    print(f"wrote {out}")
    return 0


def _argv(args: argparse.Namespace) -> list[str]:
    """The options given, for the result file."""
    parts = [f"--model {args.model}", f"--backend {' '.join(args.backend)}", f"--repeats {args.repeats}"]
    if args.images:
        parts.append("--images " + " ".join(args.images))
    if args.threads:
        parts.append(f"--threads {args.threads}")
    if args.sizes:
        parts.append("--sizes " + ",".join(map(str, args.sizes)))
    if args.max_images:
        parts.append(f"--max-images {args.max_images}")
    if args.no_command:
        parts.append("--no-command")
    return parts
