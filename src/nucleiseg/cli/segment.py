"""``nucleiseg segment``: the parser and the command (heavy imports inside the command)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported where used: the parser is built at start-up
    from nucleiseg.io.units import Diameter


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the sub-command on the main parser's sub-parsers."""
    p = sub.add_parser(
        "segment",
        help="segment nuclei in images, folders or DSB-layout folders",
        description="Segment every image found under INPUT (files, folders recursively, DSB layout) "
        "and write OUT/<id>_masks.tif per image plus OUT/run.json.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders")
    p.add_argument("-o", "--out", required=True, help="output folder")
    _add_settings(p)
    _add_outputs(p)
    _add_execution(p)
    p.set_defaults(func=cmd_segment)


def _add_settings(p: argparse.ArgumentParser) -> None:
    """The model and its settings: scale, tiles, thresholds."""
    p.add_argument("--model", default="default", help="bundled model name, run folder, or 'classical' (default: default)")
    p.add_argument("--tta", action="store_true", help="average the 8 flips/rotations")
    p.add_argument("--tile", type=int, help="tile side in pixels (default from the model)")
    p.add_argument("--overlap", type=float, help="tile overlap fraction (default 0.25)")
    p.add_argument("--diameter", metavar="D", help="typical nucleus diameter, skips the estimate: pixels (30), or micrometres "
                   "(8um) with a pixel size from the file or --pixel-size; 0 or auto: estimate it (the default)")
    p.add_argument("--pixel-size", metavar="UM", help="micrometres per pixel, overriding the files' OME/ImageJ/TIFF "
                   "metadata; adds µm columns to --measure and QuPath's µm measurements to --geojson")
    p.add_argument("--no-rescale", action="store_true", help="segment at native scale only, without a size estimate")
    p.add_argument("--min-zoom", type=float, help="smallest zoom an image is shrunk to (default 0.25, nuclei up to ~150 px; "
                   "0.125 for larger nuclei)")
    p.add_argument("--threshold", type=float, help="foreground probability threshold")
    p.add_argument("--min-size", type=int, help="remove nuclei smaller than this many pixels")
    p.add_argument("--min-confidence", type=float,
                   help="remove nuclei whose mean foreground probability is below this (0 keeps all; default from the model)")


def _add_outputs(p: argparse.ArgumentParser) -> None:
    """What is written besides the label images, and which channel or planes of the inputs are read."""
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


def _add_execution(p: argparse.ArgumentParser) -> None:
    """Where and how the images run: device, engine, threads, workers, Dask, blocks, resuming."""
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
    p.add_argument("--resume", action="store_true",
                   help="skip images whose requested outputs already exist in OUT and look complete (size and header); "
                   "removes the temporary files of an interrupted run and rebuilds an unreadable run.json")
    p.add_argument("--verify", action="store_true", help="with --resume: decode every label image it would skip, completely")


def _usage_error(args: argparse.Namespace) -> str | None:
    """The one-line error of options that cannot go together, else None."""
    if args.workers < 1:
        return f"--workers must be >= 1, got {args.workers}"
    extras = args.png or args.overlay or args.measure or args.rois or args.rle or args.geojson
    if args.block is not None and extras:
        return "--block writes only OUT/<id>_masks.zarr; drop --png/--overlay/--measure/--rois/--rle/--geojson"
    if args.block is not None and (args.channel is not None or args.axes):
        return "--block reads 2-D gray or RGB images; drop --channel/--axes"
    if args.block is not None and args.workers > 1:
        return "--block runs on Dask (--dask) or its local scheduler; drop --workers"
    return None


def _settings(args: argparse.Namespace, segmenter: Any, diameter: Diameter) -> tuple[Any, Any]:
    """``(InferConfig, PostprocessConfig)``: the model's own with the command line's options applied."""
    from dataclasses import replace

    infer = segmenter.config.infer
    overrides = {"tta": args.tta or infer.tta, "rescale": infer.rescale and not args.no_rescale}
    for name in ("tile", "overlap", "min_zoom"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    if args.diameter is not None:  # "0"/"auto" estimate, as the model's own default does
        overrides["diameter"] = diameter.value if diameter.unit == "px" else None
    post = segmenter.config.postprocess.overridden(args.threshold, args.min_size, args.min_confidence)
    return replace(infer, **overrides), post


def _executor(args: argparse.Namespace, count: int) -> tuple[str, int, int | None]:
    """``(executor, workers, threads)``: a folder on a CPU runs one image per core, each on one thread."""
    from nucleiseg.inference.executors import available_cpus

    executor = "dask" if args.dask else "processes" if args.workers > 1 else "serial"
    if executor == "serial" and args.block is None and args.threads is None and args.device == "cpu" and count > 1:
        return "threads", available_cpus(), 1
    return executor, args.workers, args.threads


def cmd_segment(args: argparse.Namespace) -> int:
    """Run ``nucleiseg segment``: build the model spec, settings and outputs, pick the executor, run the batch."""
    from nucleiseg.bundle import ModelSpec
    from nucleiseg.inference.batch import segment_items
    from nucleiseg.inference.item import load_segmenter
    from nucleiseg.io.atomic import OutputError
    from nucleiseg.io.labels import discover_inputs
    from nucleiseg.io.layout import OutputOptions
    from nucleiseg.io.stacks import parse_channel

    problem = _usage_error(args)
    if problem is None:
        try:
            diameter, pixel_size = _units(args)
        except ValueError as exc:
            problem = str(exc)
    items = discover_inputs([Path(p) for p in args.inputs]) if problem is None else []
    if problem is None and not items:
        problem = f"no images found in {' '.join(args.inputs)}"
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    executor, workers, threads = _executor(args, len(items))
    spec = ModelSpec.of(args.model, args.backend, args.device, threads)
    segmenter = load_segmenter(spec)
    infer, post = _settings(args, segmenter, diameter)
    options = OutputOptions(png=args.png, overlay=args.overlay, measure=args.measure, rois=args.rois, rle=args.rle,
                            geojson=args.geojson, channel=parse_channel(args.channel), axes=args.axes, pixel_size=pixel_size,
                            diameter_um=diameter.value if diameter.unit == "um" else None)
    client = None
    if args.dask:
        from nucleiseg.distributed import get_client

        client = get_client(args.dask)
    try:
        summary = segment_items(
            items, args.out, spec, options, infer, post, executor=executor, workers=workers, resume=args.resume,
            verify=args.verify, progress=not args.quiet, segmenter=segmenter, client=client, block=args.block,
            block_overlap=args.block_overlap,
        )
    except OutputError as exc:  # the summary of what was done, then the one-line error (exit 3)
        if exc.record is not None:
            print(exc.record.line())
        raise
    finally:
        if client is not None:
            client.close()
    print(summary.line())
    return 1 if summary.failures else 0


def _units(args: argparse.Namespace) -> tuple[Diameter, float | None]:
    """``--diameter`` as a :class:`~nucleiseg.io.units.Diameter` and ``--pixel-size`` in µm (or None)."""
    from nucleiseg.io.units import Diameter, parse_pixel_size

    diameter = Diameter.parse(args.diameter)
    pixel_size = None if args.pixel_size is None else parse_pixel_size(args.pixel_size)
    if args.block is not None and diameter.unit == "um":
        raise ValueError("--block takes --diameter in pixels")
    return diameter, pixel_size
