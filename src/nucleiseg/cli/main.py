"""``nucleiseg`` command line: parsers and commands only; heavy imports happen inside commands."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from nucleiseg import __version__
from nucleiseg.cli import benchmark as _bench
from nucleiseg.cli import ensemble as _ensemble
from nucleiseg.cli import export as _export
from nucleiseg.cli.serve import add_parser as _add_serve

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def _add_segment(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "segment",
        help="segment nuclei in images, folders or DSB-layout folders",
        description="Segment every image found under INPUT (files, folders recursively, DSB layout) "
        "and write OUT/<id>_masks.tif per image plus OUT/run.json.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders")
    p.add_argument("-o", "--out", required=True, help="output folder")
    p.add_argument("--model", default="default", help="bundled model name, run folder, or 'classical' (default: default)")
    p.add_argument("--tta", action="store_true", help="average the 8 flips/rotations")
    p.add_argument("--tile", type=int, help="tile side in pixels (default from the model)")
    p.add_argument("--overlap", type=float, help="tile overlap fraction (default 0.25)")
    p.add_argument("--diameter", type=float, help="typical nucleus diameter in pixels (skips the estimate)")
    p.add_argument("--no-rescale", action="store_true", help="segment at native scale only")
    p.add_argument("--min-zoom", type=float, help="smallest zoom an image is shrunk to (default 0.25, nuclei up to ~150 px; "
                   "0.125 for larger nuclei)")
    p.add_argument("--threshold", type=float, help="foreground probability threshold")
    p.add_argument("--min-size", type=int, help="remove nuclei smaller than this many pixels")
    p.add_argument("--min-confidence", type=float,
                   help="remove nuclei whose mean foreground probability is below this (0 keeps all; default from the model)")
    p.add_argument("--png", action="store_true", help="also write <id>_masks.png (uint16)")
    p.add_argument("--overlay", action="store_true", help="write <id>_overlay.png (and _diff.png with ground truth)")
    p.add_argument("--measure", action="store_true", help="write <id>_measurements.csv")
    p.add_argument("--rois", action="store_true", help="write <id>_rois.zip (ImageJ ROIs)")
    p.add_argument("--rle", metavar="FILE", help="write a competition run-length CSV for all images")
    p.add_argument("--geojson", action="store_true",
                   help="write <id>.geojson: QuPath detections (one polygon per nucleus) with the measurements")
    p.add_argument("--channel", metavar="N|NAME",
                   help="nuclear channel of multi-channel images: 0-based index, or a channel name from the "
                   "OME/ImageJ metadata (e.g. dapi)")
    p.add_argument("--axes", metavar="LETTERS",
                   help="axis order of files without axis metadata, e.g. ZYX, TYX, CYX, TCYX (T and Z planes are "
                   "segmented one by one into a label stack)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    from nucleiseg.inference.predictors import BACKENDS

    p.add_argument("--backend", default="auto", choices=list(BACKENDS),
                   help="inference engine: auto (default: the model's fastest form on a CPU, int8 ONNX for the bundled "
                   "default, scoring within 0.005 of PyTorch; PyTorch on other devices), torch, or ONNX Runtime with the "
                   "model folder's model.onnx / model.fp16.onnx / model.int8.onnx (from `nucleiseg export`)")
    p.add_argument("--threads", type=int, help="CPU threads for the network (ONNX Runtime intra-op threads, or PyTorch's), per worker with "
                   "--workers or --dask. Default: several images on a CPU are segmented one per core at a time in this "
                   "process, each on one thread; one image, or --workers/--dask, uses all cores, shared out between the "
                   "workers. Given, images are segmented one after the other with this many threads each")
    p.add_argument("--workers", type=int, default=1,
                   help="worker processes, each with its own model copy and an equal share of the cores "
                   "(default 1: the images run on threads of this process, one per core, which starts faster)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--dask", metavar="SPEC",
                   help="run on Dask: 'local' (one worker per core), 'local:N', or a scheduler address tcp://host:8786")
    p.add_argument("--block", type=int, metavar="PX",
                   help="segment each image block-wise in PX x PX tiles (images larger than memory); "
                   "writes OUT/<id>_masks.zarr")
    p.add_argument("--block-overlap", type=int, metavar="PX",
                   help="margin segmented around each block (default: max(64, 4 x nucleus diameter))")
    p.add_argument("--resume", action="store_true", help="skip images whose requested outputs already exist in OUT")
    p.set_defaults(func=cmd_segment)


def cmd_segment(args: argparse.Namespace) -> int:
    """Run ``nucleiseg segment``: build the model spec, settings and outputs, pick the executor, run the batch."""
    from dataclasses import replace

    from nucleiseg.bundle import ModelSpec
    from nucleiseg.inference.batch import segment_items
    from nucleiseg.inference.executors import available_cpus
    from nucleiseg.inference.item import load_segmenter
    from nucleiseg.io.labels import discover_inputs
    from nucleiseg.io.layout import OutputOptions
    from nucleiseg.io.stacks import parse_channel

    if args.workers < 1:
        print(f"error: --workers must be >= 1, got {args.workers}", file=sys.stderr)
        return 2
    extras = args.png or args.overlay or args.measure or args.rois or args.rle or args.geojson
    if args.block is not None and extras:
        print("error: --block writes only OUT/<id>_masks.zarr; drop --png/--overlay/--measure/--rois/--rle/--geojson", file=sys.stderr)
        return 2
    if args.block is not None and (args.channel is not None or args.axes):
        print("error: --block reads 2-D gray or RGB images; drop --channel/--axes", file=sys.stderr)
        return 2
    if args.block is not None and args.workers > 1:
        print("error: --block runs on Dask (--dask) or its local scheduler; drop --workers", file=sys.stderr)
        return 2
    items = discover_inputs([Path(p) for p in args.inputs])
    if not items:
        print(f"error: no images found in {' '.join(args.inputs)}", file=sys.stderr)
        return 2
    executor = "dask" if args.dask else "processes" if args.workers > 1 else "serial"
    workers = args.workers
    threads = args.threads
    if executor == "serial" and args.block is None and threads is None and args.device == "cpu" and len(items) > 1:
        # A folder on a CPU: one image per core at a time, each network call on one thread.
        executor, workers, threads = "threads", available_cpus(), 1
    spec = ModelSpec.of(args.model, args.backend, args.device, threads)
    segmenter = load_segmenter(spec)
    infer = segmenter.config.infer
    overrides = {"tta": args.tta or infer.tta, "rescale": infer.rescale and not args.no_rescale}
    for name in ("tile", "overlap", "diameter", "min_zoom"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    infer = replace(infer, **overrides)
    post = segmenter.config.postprocess
    if args.threshold is not None:
        post = replace(post, threshold=args.threshold)
    if args.min_size is not None:
        post = replace(post, min_size=args.min_size)
    if args.min_confidence is not None:
        post = replace(post, min_confidence=args.min_confidence)
    options = OutputOptions(png=args.png, overlay=args.overlay, measure=args.measure, rois=args.rois, rle=args.rle,
                            geojson=args.geojson, channel=parse_channel(args.channel), axes=args.axes)
    client = None
    if args.dask:
        from nucleiseg.distributed import get_client

        client = get_client(args.dask)
    try:
        summary = segment_items(
            items, args.out, spec, options, infer, post, executor=executor, workers=workers, resume=args.resume,
            progress=not args.quiet, segmenter=segmenter, client=client, block=args.block, block_overlap=args.block_overlap,
        )
    finally:
        if client is not None:
            client.close()
    print(summary.line())
    return 1 if summary.failures else 0


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score predictions with the DSB 2018 competition metric",
        description="Compare predicted label images with ground truth: competition score (mean over "
        "IoU 0.5..0.95 of TP/(TP+FP+FN)), AP@0.5, F1, panoptic quality, foreground IoU and mean IoU.",
    )
    p.add_argument("--gt", required=True, help="DSB folder, label-image folder or run-length CSV (with Height,Width)")
    p.add_argument("--pred", required=True, help="segment output folder, label-image folder or run-length CSV")
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
        print(f"warning: {len(missing)} ground-truth images had no prediction (scored as empty)", file=sys.stderr)
    return 0


def _add_inspect(sub: argparse._SubParsersAction) -> None:
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


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a U-Net family model on a DSB-layout folder",
        description="Train with random augmented crops at native resolution; validate each epoch with "
        "the full instance pipeline and the competition score; keep the best checkpoint. Every option "
        "can also be set in a YAML/JSON file (--config) whose keys are TrainConfig fields; command-line "
        "options win over the file.",
    )
    p.add_argument("--config", help="YAML or JSON recipe (see configs/)")
    p.add_argument("--data", help="DSB-layout training folder")
    p.add_argument("--out", help="run folder (e.g. runs/unet)")
    p.add_argument("--model", dest="arch", help="unet, unetpp, linknet, hrnet, resunet")
    p.add_argument("--targets", help="binary or contour")
    p.add_argument("--epochs", type=int, help="maximum epochs")
    p.add_argument("--steps-per-epoch", type=int, help="batches per epoch (default: one pass over the images)")
    p.add_argument("--batch-size", type=int, help="crops per batch")
    p.add_argument("--crop-size", type=int, help="crop side in pixels")
    p.add_argument("--lr", type=float, help="learning rate (default 1e-3)")
    p.add_argument("--optimizer", help="adam, adamw, sgd, rmsprop")
    p.add_argument("--scheduler", help="cosine, plateau, none")
    p.add_argument("--patience", type=int, help="early-stopping patience in epochs")
    p.add_argument("--max-minutes", type=float, help="stop after this much training time")
    p.add_argument("--val-fraction", type=float, help="validation fraction of the image ids")
    p.add_argument("--limit-images", type=int, help="train on the first N training images only")
    p.add_argument("--val-max-images", type=int, help="validate on at most N images")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--seed", type=int, help="random seed")
    p.add_argument("--workers", type=int, help="processes making augmented crops and threads loading images (0: none)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--amp", choices=["auto", "bf16", "off"],
                   help="bfloat16 autocast: auto (default) uses it on CUDA and on CPUs with native bfloat16")
    p.add_argument("--train-diameter", type=float, metavar="PX",
                   help="train at one scale: rescale every image so its median nucleus diameter is PX pixels "
                   "(inference then always rescales to it); default: native scale")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.safetensors")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train)


def load_recipe(args: argparse.Namespace):
    """Merge the YAML/JSON recipe file with command-line options into a TrainConfig."""
    import yaml

    from nucleiseg.config import TrainConfig, from_dict

    data: dict = {}
    if args.config:
        with open(args.config, encoding="utf-8") as fh:
            data = yaml.safe_load(fh) or {}
    flat = {
        "data": args.data, "out": args.out, "epochs": args.epochs, "steps_per_epoch": args.steps_per_epoch,
        "batch_size": args.batch_size, "crop_size": args.crop_size, "lr": args.lr, "optimizer": args.optimizer,
        "scheduler": args.scheduler, "patience": args.patience, "max_minutes": args.max_minutes,
        "val_fraction": args.val_fraction, "limit_images": args.limit_images, "val_max_images": args.val_max_images,
        "threads": args.threads, "seed": args.seed, "train_diameter": args.train_diameter,
        "amp": args.amp, "workers": args.workers,
    }
    data.update({k: v for k, v in flat.items() if v is not None})
    if isinstance(data.get("amp"), bool):  # YAML 1.1 reads a bare off/on as a boolean
        data["amp"] = "bf16" if data["amp"] else "off"
    if args.arch:
        data.setdefault("model", {})["arch"] = args.arch
    if args.targets:
        data.setdefault("targets", {})["mode"] = args.targets
    cfg = from_dict(TrainConfig, data)
    if cfg.targets.mode == "binary" and len(cfg.loss.channel_weights) > 1:
        cfg.loss.channel_weights = cfg.loss.channel_weights[:1]
    return cfg


def cmd_train(args: argparse.Namespace) -> int:
    """Run ``nucleiseg train``."""
    from nucleiseg.training import train

    cfg = load_recipe(args)
    out = train(cfg, resume=args.resume, progress=not args.quiet, device=args.device)
    report = json.loads((out / "report.json").read_text())
    print(f"run folder {out}: best validation score {report['best_val_score']:.4f} at epoch {report['best_epoch']}")
    if report.get("average"):
        avg = report["average"]
        print(f"weights.safetensors: the average of the last {avg['epochs']} epochs, validation score {avg['val']['val_score']:.4f} "
              "(the best epoch is best.safetensors)")
    return 0


def _add_validate(sub: argparse._SubParsersAction) -> None:
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


def build_parser() -> argparse.ArgumentParser:
    """The full ``nucleiseg`` parser with every sub-command."""
    parser = argparse.ArgumentParser(
        prog="nucleiseg",
        description="Find every cell nucleus in 2D microscopy images.",
    )
    parser.add_argument("--version", action="version", version=f"nucleiseg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands = (_add_segment, _add_evaluate, _add_inspect, _add_train, _add_validate, _add_serve,
                _export.add_parser, _ensemble.add_parser, _bench.add_parser)
    for add in commands:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``nucleiseg`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("interrupted: finished outputs are complete, nothing partial was written", file=sys.stderr)
        return 130
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
