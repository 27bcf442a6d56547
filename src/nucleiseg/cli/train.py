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
        help="train a model, or fine-tune a bundled model or a run (--from) on a few annotated images",
        description="Train with random augmented crops at native resolution; validate each epoch with "
        "the full instance pipeline and the competition score; keep the best checkpoint. Every option "
        "can also be set in a YAML/JSON file (--config) whose keys are TrainConfig fields; command-line "
        "options win over the file. With --from NAME|RUN, fine-tune that model instead: --data is any "
        "folder (or image) with ground truth that `nucleiseg evaluate` reads, --max-minutes the budget "
        "(default 5), and --config a file of FineTuneConfig fields (configs/fine_tune.yaml).",
    )
    p.add_argument("--from", dest="parent", metavar="NAME|RUN",
                   help="fine-tune this bundled model (default, accurate) or run folder instead of training from scratch")
    p.add_argument("--config", help="YAML or JSON recipe (see configs/)")
    p.add_argument("--data", help="training folder: DSB layout, images/ + masks/, x.tif + x_masks.tif pairs (or one image)")
    p.add_argument("--out", help="run folder (e.g. runs/unet)")
    p.add_argument("--model", dest="arch", help="unet, unetpp, linknet, hrnet, resunet")
    p.add_argument("--targets", help="binary or contour")
    p.add_argument("--epochs", type=int, help="maximum epochs (with --from: a budget of epochs instead of --max-minutes)")
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


#: Options of a training from scratch that a fine-tune takes from its parent or its built-in recipe.
_NOT_WITH_FROM = ("arch", "targets", "optimizer", "scheduler", "patience", "limit_images", "val_max_images",
                  "train_diameter", "amp", "workers", "resume")


def fine_tune_recipe(args: argparse.Namespace):
    """Merge a FineTuneConfig YAML/JSON file with command-line options (``--from``)."""
    import yaml

    from nucleiseg.config import from_dict
    from nucleiseg.training.finetune import FineTuneConfig

    given = [f"--{k.replace('_', '-')}" for k in _NOT_WITH_FROM if getattr(args, k)]
    if given:
        raise ValueError(f"{', '.join(given)}: not with --from (a fine-tune keeps its parent's model and recipe)")
    data: dict = {}
    if args.config:
        with open(args.config, encoding="utf-8") as fh:
            data = yaml.safe_load(fh) or {}
    flat = {"parent": args.parent, "data": args.data, "out": args.out, "max_minutes": args.max_minutes, "epochs": args.epochs,
            "lr": args.lr,
            "crop_size": args.crop_size, "batch_size": args.batch_size, "steps_per_epoch": args.steps_per_epoch,
            "val_fraction": args.val_fraction, "threads": args.threads, "seed": args.seed}
    data.update({k: v for k, v in flat.items() if v is not None})
    if not data.get("data"):
        raise ValueError("--from needs --data: a folder (or image) with ground truth")
    return from_dict(FineTuneConfig, data)


def cmd_fine_tune(args: argparse.Namespace) -> int:
    """Run ``nucleiseg train --from``."""
    from nucleiseg.training.finetune import fine_tune

    try:
        ft = fine_tune_recipe(args)
        out = fine_tune(ft, progress=not args.quiet, device=args.device)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    ev = json.loads((out / "evaluation.json").read_text())
    where = "the training images (too few to hold any out)" if ev["val_on_train"] else f"{ev['n_images']} held-out images"
    print(f"run folder {out}: fine-tuned from {ft.parent}; on {where}: parent {ev['parent']['val_score']:.4f}, "
          f"fine-tuned {ev['native_tuned']['val_score']:.4f} (use it with --model {out})")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Run ``nucleiseg train``."""
    from nucleiseg.training import train

    if args.parent:
        return cmd_fine_tune(args)
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
