"""``nucleiseg validate``: score a run on its validation split."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the sub-command on the main parser's sub-parsers."""
    p = sub.add_parser(
        "validate",
        help="score a run folder on its validation split; tune post-processing thresholds",
        description="Score RUN on the validation ids in its split.json: native scale with default and "
        "tuned post-processing, optionally with TTA, and the full user pipeline. --tune grid-searches the "
        "thresholds on the validation split and saves them as RUN/thresholds.json (loaded by default).",
    )
    p.add_argument("run", help="run folder from `nucleiseg train`")
    p.add_argument("--data", default="../shared/data/dsb2018/stage1_train", help="DSB folder the run was trained on")
    p.add_argument("--tune", action="store_true", help="tune and save thresholds.json")
    p.add_argument("--tta", action="store_true", help="also score with test-time augmentation")
    p.add_argument("--no-pipeline", action="store_true", help="skip the full-pipeline (rescaling) scores")
    p.add_argument("--max-images", type=int, help="first N validation images only")
    p.add_argument("--suite", action="store_true",
                   help="also run the accuracy suite (zoomed validation images, BBBC039 held out, MoNuSeg: image kinds "
                   "the run was not tuned on) and write RUN/accuracy.json and RUN/accuracy.md")
    p.add_argument("--shared", default="../shared/data", help="shared data folder for --suite (default ../shared/data)")
    p.add_argument("--baseline", default="benchmarks/results/accuracy_classical.json",
                   help="classical rows to reuse for --suite when they cover the same sets (else recomputed)")
    p.set_defaults(func=cmd_validate)


def cmd_validate(args: argparse.Namespace) -> int:
    """Run ``nucleiseg validate``."""
    from nucleiseg.training.evaluate import evaluate_run, format_results

    results = evaluate_run(args.run, args.data, tune=args.tune, tta=args.tta, pipeline=not args.no_pipeline,
                           max_images=args.max_images)
    print(format_results(results))
    print(f"written: {Path(results['run']) / 'evaluation.json'}")
    if args.suite:
        from nucleiseg.benchmark.accuracy import format_markdown, run_suite
        from nucleiseg.io.atomic import atomic_write_text

        run = Path(results["run"])
        suite = run_suite(str(run), Path(args.shared), Path("out") / "accuracy_suite", baseline_file=Path(args.baseline))
        command = f"nucleiseg validate {args.run} --suite"
        suite["command"] = command
        atomic_write_text(run / "accuracy.json", json.dumps(suite, indent=2) + "\n")
        table = format_markdown(suite, command)
        atomic_write_text(run / "accuracy.md", table)
        print(table)
        print(f"written: {run / 'accuracy.json'}, {run / 'accuracy.md'}")
    return 0
