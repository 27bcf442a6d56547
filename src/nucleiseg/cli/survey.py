"""``nucleiseg inspect``: survey a dataset."""

from __future__ import annotations

import argparse
import json


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the sub-command on the main parser's sub-parsers."""
    p = sub.add_parser(
        "inspect",
        help="survey a dataset: sizes, colour modes, nuclei counts and diameters, mask problems",
        description="Print dataset statistics; with -o also write images.csv, summary.json and a "
        "samples.png grid of images with their nuclei outlined.",
    )
    p.add_argument("data", help="DSB folder or any folder of images (with optional label images)")
    p.add_argument("-o", "--out", help="report folder")
    p.set_defaults(func=cmd_inspect)


def cmd_inspect(args: argparse.Namespace) -> int:
    """Run ``nucleiseg inspect``."""
    from nucleiseg.io.survey import survey, write_report

    table, summary, grid = survey(args.data)
    print(json.dumps(summary, indent=2))
    problems = table[table["problems"] != ""] if len(table) else table
    for _, row in problems.head(20).iterrows():
        print(f"problem: {row['id']}: {row['problems']}")
    if args.out:
        write_report(args.out, table, summary, grid)
        print(f"written: {args.out}/images.csv, summary.json, samples.png")
    return 0
