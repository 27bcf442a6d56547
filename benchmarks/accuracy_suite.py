"""Score a model on image kinds it was not tuned on: the accuracy suite.

Rows (see :mod:`nucleiseg.benchmark.suite_sets`): the DSB validation split (native, and by image
kind), the same images zoomed x0.5 / x2 / x4, the BBBC039 held-out list and the MoNuSeg H&E test
set; each row runs ``nucleiseg segment`` as a user does and scores it with the function behind
``nucleiseg evaluate``, next to the classical baseline on the same images. The lead figure,
"unseen kinds", is the mean of (zoom rows' mean, BBBC039, MoNuSeg).

Writes ``benchmarks/results/accuracy_<model>[_tta][_<backend>].json`` and ``.md``.

Usage::

    python benchmarks/accuracy_suite.py --model default
    python benchmarks/accuracy_suite.py --model classical
    python benchmarks/accuracy_suite.py --model runs/my_run --tta --backend onnx-int8
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    """Run the suite and write its JSON and Markdown results."""
    from nucleiseg import __version__
    from nucleiseg.benchmark.accuracy import format_markdown, run_suite
    from nucleiseg.io.atomic import atomic_write_text

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default", help="bundled model name, run folder or 'classical'")
    parser.add_argument("--tta", action="store_true", help="segment with 8-fold test-time augmentation")
    parser.add_argument("--backend", help="segment --backend (torch, onnx, onnx-fp16, onnx-int8)")
    parser.add_argument("--shared", default=str(ROOT.parent / "shared" / "data"), help="shared data folder")
    parser.add_argument("--cache", default=str(ROOT / "out" / "accuracy_suite"), help="working folder")
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results"), help="where the tables go")
    args = parser.parse_args(argv)

    results = Path(args.results)
    name = Path(args.model).name + ("_tta" if args.tta else "") + (f"_{args.backend}" if args.backend else "")
    result = run_suite(args.model, Path(args.shared), Path(args.cache), tta=args.tta, backend=args.backend,
                       baseline_file=results / "accuracy_classical.json")
    result["machine"] = {"platform": platform.platform(), "python": sys.version.split()[0], "nucleiseg": __version__}
    command = "python benchmarks/accuracy_suite.py --model " + args.model + (" --tta" if args.tta else "") + (
        f" --backend {args.backend}" if args.backend else "")
    result["command"] = command
    results.mkdir(parents=True, exist_ok=True)
    atomic_write_text(results / f"accuracy_{name}.json", json.dumps(result, indent=2) + "\n")
    table = format_markdown(result, command)
    atomic_write_text(results / f"accuracy_{name}.md", table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
