"""Compare the five architectures, the bundled default model and the classical floor.

Every architecture is trained with the same recipe and the same budget, 1,500 Adam steps of
8 random 192x192 crops (``configs/compare/<arch>.yaml``; a step budget, so the result does not
depend on the machine's speed or load), then all models are scored on the fixed validation split
(``val_fraction`` 0.1, ``split_seed`` 2018: 67 of the 664 stage-1 training images) at native
resolution, with and without 8-fold test-time augmentation:

* parameters, fp32 weights size on disk, median CPU forward milliseconds for one 1x3x256x256
  image (2 threads, channels-last, ``torch.inference_mode``; for the classical baseline the
  whole segmentation of a 256x256 image);
* competition score (macro mean over images), AP@0.5, F1@0.5 and mean IoU (seed definition).

Networks use the post-processing stored with them: the default thresholds for the comparison
runs, which are never tuned; ``thresholds.json`` for the bundled default model (tuned on the same
validation split, which the table says).

Outputs: ``benchmarks/results/compare_models.json`` and ``.md`` (the table),
``docs/figures/compare_models.png`` (validation images, true masks and every model's outlines)
and ``docs/figures/default_diff.png`` (the default model's difference view).

Usage::

    python benchmarks/compare_models.py --train --jobs 2   # train missing runs, two at a time, then score
    python benchmarks/compare_models.py             # score existing runs in runs/compare/
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from nucleiseg.config import (
    ModelBundleConfig,
    PostprocessConfig,
    TrainConfig,
    from_dict,
    load_json,
    to_dict,
)
from nucleiseg.bundle import ModelBundle
from nucleiseg.io.atomic import atomic_write_text
from nucleiseg.io.dsb import load_sample
from nucleiseg.metrics import evaluate_pairs
from nucleiseg.models import count_parameters
from nucleiseg.postprocess import classical_segment, probabilities_to_labels
from nucleiseg.training import train
from nucleiseg.training.checkpoint import file_hash, load_model
from nucleiseg.training.data import available_ids, load_samples, split_ids
from nucleiseg.training.validation import predict_samples

ROOT = Path(__file__).resolve().parent.parent
ARCHS = ("unet", "unetpp", "linknet", "hrnet", "resunet")
RESULTS = ROOT / "benchmarks" / "results"
FIGURES = ROOT / "docs" / "figures"
# Relative CPU cost of a training step (docs/models.md), to schedule the slowest runs first.
TRAIN_COST = {"unetpp": 2.2, "unet": 1.0, "hrnet": 1.0, "resunet": 0.5, "linknet": 0.4}


def _train_one(arch: str, progress: bool) -> str:
    recipe = ROOT / "configs" / "compare" / f"{arch}.yaml"
    cfg = from_dict(TrainConfig, yaml.safe_load(recipe.read_text()))
    out = Path(cfg.out)
    if not (out / "report.json").is_file():
        train(cfg, resume=(out / "last.safetensors").is_file(), progress=progress)
    return arch


def train_missing(archs: tuple[str, ...], jobs: int, progress: bool) -> None:
    """Train every ``configs/compare/<arch>.yaml`` whose run has no ``report.json`` (resuming).

    With ``jobs`` > 1 the runs go to that many processes (each recipe sets its own threads),
    slowest architectures first.
    """
    if jobs <= 1:
        for arch in archs:
            _train_one(arch, progress)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    slowest_first = sorted(archs, key=lambda a: -TRAIN_COST.get(a, 1.0))
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        for arch in pool.map(_train_one, slowest_first, [False] * len(archs)):
            print(f"trained {arch}")


def summarise(pairs: list[tuple[str, np.ndarray, np.ndarray]]) -> dict[str, float]:
    """Score, AP@0.5, F1 and seed mean IoU of (id, true, predicted) label pairs."""
    s = evaluate_pairs(pairs).summary
    return {
        "score": float(s["score_macro"]), "ap50": float(s["ap50"]),
        "f1": float(s["f1_50"]), "mean_iou_seed": float(s["mean_iou_seed"]),
    }


def forward_ms(model: torch.nn.Module, repeats: int = 7) -> float:
    """Median milliseconds of one 1x3x256x256 forward pass."""
    model = model.eval().to(memory_format=torch.channels_last)
    x = torch.rand(1, 3, 256, 256).contiguous(memory_format=torch.channels_last)
    times = []
    with torch.inference_mode():
        for i in range(repeats + 2):
            t = time.perf_counter()
            model(x)
            if i >= 2:
                times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def score_network(
    folder: Path, samples: list, tta: bool, figure_rows: list[int], cache: Path, progress: bool
) -> tuple[dict[str, Any], dict[int, np.ndarray]]:
    """Score one trained model folder on the validation samples.

    Returns its table row and the labels of the figure's images. Scores are cached in ``cache``
    (keyed by the weights hash, the image ids and TTA), so a re-run only re-times the network.
    """
    config = load_json(ModelBundleConfig, folder / "config.json")
    post, tuned = config.postprocess, (folder / "thresholds.json").is_file()
    if tuned:
        post = load_json(PostprocessConfig, folder / "thresholds.json")
    weights = folder / "weights.safetensors"
    model = load_model(config.model, weights)
    report = json.loads((folder / "report.json").read_text()) if (folder / "report.json").is_file() else {}
    key = {"sha256": file_hash(weights), "ids": [s.id for s in samples], "tta": tta, "post": to_dict(post)}
    row: dict[str, Any] = {
        "arch": config.model.arch, "params": count_parameters(model), "weights_mb": weights.stat().st_size / 2**20,
        "sha256": key["sha256"][:12], "thresholds": "tuned on val" if tuned else "default",
        "train_minutes": round(report.get("train_seconds", float("nan")) / 60, 1), "epochs": report.get("epochs_run"),
        "ms_256": forward_ms(model),
    }
    cached = json.loads(cache.read_text()) if cache.is_file() else {}
    if cached.get("key") == key:
        row.update(cached["scores"])
        figure = [samples[i] for i in figure_rows]
        probs = predict_samples(model, figure, config.infer)
        return row, {i: probabilities_to_labels(p, post) for i, p in zip(figure_rows, probs, strict=True)}
    probs = predict_samples(model, samples, config.infer, progress=progress)
    labels = [probabilities_to_labels(p, post) for p in probs]
    scores: dict[str, Any] = summarise([(s.id, s.labels, lab) for s, lab in zip(samples, labels, strict=True)])
    if tta:
        probs = predict_samples(model, samples, config.infer, tta=True, progress=progress)
        tta_labels = [probabilities_to_labels(p, post) for p in probs]
        scores["tta"] = summarise([(s.id, s.labels, lab) for s, lab in zip(samples, tta_labels, strict=True)])
    cache.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(cache, json.dumps({"key": key, "scores": scores}))
    row.update(scores)
    return row, {i: labels[i] for i in figure_rows}


def score_classical(raws: list[np.ndarray], samples: list) -> tuple[dict[str, Any], dict[int, np.ndarray]]:
    """Score the classical baseline (Otsu + distance-transform watershed) on the raw images."""
    labels = [classical_segment(img) for img in raws]
    small = np.ascontiguousarray(raws[0][:256, :256]) if min(raws[0].shape[:2]) >= 256 else raws[0]
    times = []
    for _ in range(5):
        t = time.perf_counter()
        classical_segment(small)
        times.append(time.perf_counter() - t)
    row: dict[str, Any] = {"arch": "classical", "params": 0, "weights_mb": 0.0, "thresholds": "fixed", "ms_256": 1000 * statistics.median(times)}
    row.update(summarise([(s.id, s.labels, lab) for s, lab in zip(samples, labels, strict=True)]))
    return row, dict(enumerate(labels))


def figure_rows(samples: list, n: int = 4) -> list[int]:
    """Indices of ``n`` validation images of different kinds (one per image-style cluster)."""
    from nucleiseg.transforms import image_style_features, style_clusters

    features = np.stack([image_style_features(s.image.astype(np.float32)) for s in samples])
    clusters = style_clusters(features, n)
    picks = [int(np.flatnonzero(clusters == c)[0]) for c in np.unique(clusters)]
    return sorted(picks)[:n]


def draw_figures(samples: list, raws: list, predictions: dict[str, dict[int, np.ndarray]], rows: list[int]) -> None:
    """The comparison grid (image, truth, each model) and the default model's difference view."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nucleiseg.io.outputs import difference_overlay, label_colours, overlay_outlines

    FIGURES.mkdir(parents=True, exist_ok=True)
    names = list(predictions)
    cols = ["image", "ground truth", *names]
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(2.2 * len(cols), 2.3 * len(rows)), squeeze=False)
    for r, i in enumerate(rows):
        truth = samples[i].labels
        colour_truth = np.zeros((*truth.shape, 3), np.uint8)
        colour_truth[truth > 0] = label_colours(truth[truth > 0])
        panels = [(raws[i], "image"), (colour_truth, f"truth ({truth.max()})")]
        for name in names:
            pred = predictions[name][i]
            score = summarise([(samples[i].id, truth, pred)])["score"]
            panels.append((overlay_outlines(raws[i], pred), f"{name} {score:.2f}"))
        for c, (img, title) in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(img, cmap="gray")
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(FIGURES / "compare_models.png", dpi=110)
    plt.close(fig)
    if "default" in predictions:
        fig, axes = plt.subplots(1, len(rows), figsize=(3.2 * len(rows), 3.4), squeeze=False)
        for c, i in enumerate(rows):
            axes[0, c].imshow(difference_overlay(raws[i], samples[i].labels, predictions["default"][i]))
            axes[0, c].set_title(f"{samples[i].id[:10]}: green both, red missed, blue extra", fontsize=7)
            axes[0, c].axis("off")
        fig.tight_layout()
        fig.savefig(FIGURES / "default_diff.png", dpi=110)
        plt.close(fig)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def markdown(rows: dict[str, dict[str, Any]], n_images: int) -> str:
    """The comparison table in Markdown."""
    head = (
        f"Validation split: {n_images} images (fixed split of stage1_train). Score = competition metric.\n\n"
        "| model | arch | params | weights MB | CPU ms / 256² | train min | thresholds | score | AP@0.5 | F1 | mean IoU (seed) | score +TTA | mean IoU +TTA |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for name, r in rows.items():
        tta = r.get("tta", {})
        lines.append(
            f"| {name} | {r['arch']} | {r['params'] / 1e6:.2f} M | {r['weights_mb']:.1f} | {r['ms_256']:.0f} | "
            f"{r.get('train_minutes', '-')} | {r['thresholds']} | {r['score']:.4f} | {r['ap50']:.4f} | {r['f1']:.4f} | "
            f"{r['mean_iou_seed']:.4f} | {_fmt(tta.get('score'))} | {_fmt(tta.get('mean_iou_seed'))} |"
        )
    return head + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "dsb2018" / "stage1_train"))
    parser.add_argument("--runs", default="runs/compare", help="folder of the comparison runs")
    parser.add_argument("--archs", default=",".join(ARCHS))
    parser.add_argument("--train", action="store_true", help="train the runs that are missing first")
    parser.add_argument("--jobs", type=int, default=1, help="training runs at a time (default 1)")
    parser.add_argument("--no-tta", action="store_true", help="skip the test-time-augmentation columns")
    parser.add_argument("--no-figure", action="store_true")
    parser.add_argument("--max-images", type=int, help="score only the first N validation images")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    archs = tuple(a for a in args.archs.split(",") if a)
    progress = not args.quiet
    if args.train:
        train_missing(archs, args.jobs, progress)

    data = Path(args.data)
    default_dir = ModelBundle.open("default").folder
    recipe = json.loads((default_dir / "train.json").read_text())
    ids = split_ids(available_ids(data), recipe["val_fraction"], recipe["split_seed"])[1][: args.max_images]
    samples = load_samples(data, ids, load_json(ModelBundleConfig, default_dir / "config.json").normalize, progress)
    raws = [load_sample(data / i, check=False).image for i in ids]

    rows: dict[str, dict[str, Any]] = {}
    predictions: dict[str, dict[int, np.ndarray]] = {}
    shown = figure_rows(samples)
    cache = Path(args.runs) / "scores"
    t0 = time.perf_counter()
    rows["classical"], predictions["classical"] = score_classical(raws, samples)
    for arch in archs:
        folder = Path(args.runs) / arch
        if not (folder / "weights.safetensors").is_file():
            print(f"{folder}: no trained run, skipped (use --train)")
            continue
        split = json.loads((folder / "split.json").read_text())["val"]
        if split[: len(ids)] != ids:
            raise SystemExit(f"{folder}: its validation split differs from the default model's")
        rows[arch], predictions[arch] = score_network(folder, samples, not args.no_tta, shown, cache / f"{arch}.json", progress)
        print(f"{arch}: score {rows[arch]['score']:.4f}")
    rows["default"], predictions["default"] = score_network(default_dir, samples, not args.no_tta, shown, cache / "default.json", progress)
    result = {
        "n_images": len(ids), "data": str(data), "runs": args.runs, "seconds": round(time.perf_counter() - t0, 1),
        "environment": {"torch": torch.__version__, "threads": args.threads, "python": platform.python_version(),
                        "machine": platform.machine(), "date": time.strftime("%Y-%m-%d %H:%M")},
        "models": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    suffix = "" if args.max_images is None else f"_first{args.max_images}"
    atomic_write_text(RESULTS / f"compare_models{suffix}.json", json.dumps(result, indent=2))
    table = markdown(rows, len(ids))
    atomic_write_text(RESULTS / f"compare_models{suffix}.md", table)
    print(table)
    if not args.no_figure:
        draw_figures(samples, raws, predictions, shown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
