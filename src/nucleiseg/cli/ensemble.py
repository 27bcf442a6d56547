"""``nucleiseg ensemble``: one model folder that averages the probabilities of trained models."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``ensemble`` sub-command."""
    p = sub.add_parser(
        "ensemble",
        help="combine trained models into one that averages their probabilities",
        description="Write a run folder whose model is the mean of the probabilities of RUN_DIR... "
        "(run folders or bundled model names trained for the same input, targets and validation split). "
        "It runs everywhere a model runs (segment, serve, export to ONNX/int8) at the members' summed cost. "
        "Tune its thresholds with `nucleiseg validate OUT --tune` (and measure it with --suite).",
    )
    p.add_argument("runs", nargs="+", metavar="RUN_DIR|NAME", help="two or more run folders or bundled model names")
    p.add_argument("-o", "--out", required=True, help="output run folder")
    p.set_defaults(func=cmd_ensemble)


def cmd_ensemble(args: argparse.Namespace) -> int:
    """Run ``nucleiseg ensemble``."""
    from nucleiseg.bundle import ModelBundle
    from nucleiseg.training.ensemble import make_ensemble

    folders = []
    for name in args.runs:
        folder = ModelBundle.open(name).folder
        if folder is None:
            raise ValueError(f"{name}: not a trained model folder (the classical model and lone .onnx files cannot join)")
        folders.append(folder)
    out = make_ensemble(folders, args.out, names=args.runs)
    print(f"ensemble of {len(folders)} models written to {out}; tune it with: nucleiseg validate {out} --tune")
    return 0
