"""``nucleiseg evaluate``: score predictions against ground truth."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the sub-command on the main parser's sub-parsers."""
    p = sub.add_parser(
        "evaluate",
        help="score predictions with the DSB 2018 competition metric",
        description="Compare predicted label images with ground truth: competition score (mean over "
        "IoU 0.5..0.95 of TP/(TP+FP+FN)), AP@0.5, F1, panoptic quality, foreground IoU and mean IoU.",
    )
    p.add_argument("--gt", required=True, help="DSB folder, label-image folder or run-length CSV (with Height,Width)")
    p.add_argument("--pred", required=True,
                   help="segment output folder, label-image folder or run-length CSV (shapes from the ground truth)")
    p.add_argument("-o", "--out", help="folder for per_image.csv and summary.json")
    p.add_argument("--rows", type=int, default=20, help="per-image rows to print (default 20)")
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Run ``nucleiseg evaluate``."""
    from nucleiseg.api import evaluate_paths

    report = evaluate_paths(args.gt, args.pred, progress=True)
    print(report.format_table(max_rows=args.rows))
    if args.out:
        out = Path(args.out)
        report.to_csv(out / "per_image.csv")
        report.to_json(out / "summary.json")
        print(f"written: {out / 'per_image.csv'}, {out / 'summary.json'}")
    missing = report.summary.get("missing_predictions", [])
    if missing:
        print(f"warning: {len(missing)} ground-truth images had no prediction (scored as empty): {_some(missing)}", file=sys.stderr)
    unmatched = report.summary.get("unmatched_predictions", [])
    if unmatched:
        print(f"warning: {len(unmatched)} predictions have no ground truth (not scored): {_some(unmatched)}", file=sys.stderr)
    return 0


def _some(ids: list[str], shown: int = 5) -> str:
    """The first few ids, and how many more."""
    more = f" and {len(ids) - shown} more" if len(ids) > shown else ""
    return ", ".join(ids[:shown]) + more
