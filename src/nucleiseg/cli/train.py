"""``nucleiseg train``: the parser, the recipe merge and the command."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the sub-command on the main parser's sub-parsers."""
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
    from nucleiseg.bundle import reserved_name_error

    refused = reserved_name_error(Path(cfg.out).name)
    if refused is not None:
        print(f"error: --out {cfg.out}: {refused}", file=sys.stderr)
        return 2
    out = train(cfg, resume=args.resume, progress=not args.quiet, device=args.device)
    report = json.loads((out / "report.json").read_text())
    print(f"run folder {out}: best validation score {report['best_val_score']:.4f} at epoch {report['best_epoch']}")
    if report.get("average"):
        avg = report["average"]
        print(f"weights.safetensors: the average of the last {avg['epochs']} epochs, validation score {avg['val']['val_score']:.4f} "
              "(the best epoch is best.safetensors)")
    return 0
