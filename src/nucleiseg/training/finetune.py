"""Fine-tune a bundled model or a finished run on a few annotated images (``nucleiseg train --from``).

A fine-tune keeps everything of its parent that the images meet at inference: the
architecture, input channels and normalisation, the targets, the inference settings and the
size model (reused: see ``docs/fine_tuning.md``); it starts from the parent's weights and
post-processing thresholds, trains under a time budget with a built-in recipe
(:class:`FineTuneConfig`), re-tunes the thresholds on what it has, scores the parent on the
same images, exports the int8 ONNX form and writes a model card naming parent and data. The
result is an ordinary run folder: ``segment``, ``serve``, ``export`` and ``validate`` accept it.

The ``accurate`` ensemble is fine-tuned as one model: both members, through the mean of their
probabilities (so a step costs about five of the default's).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from nucleiseg.bundle import FINE_TUNE_FILE, ModelBundle, file_hash
from nucleiseg.config import (
    AugmentConfig,
    LossConfig,
    ModelBundleConfig,
    PostprocessConfig,
    TrainConfig,
    from_dict,
    save_json,
    to_dict,
)
from nucleiseg.io.atomic import atomic_write_text
from nucleiseg.training.progress import PROGRESS_FILE, ProgressLog

__all__ = ["FINE_TUNE_FILE", "FineTuneConfig", "fine_tune", "fine_tune_recipe", "open_parent"]


@dataclass
class FineTuneConfig:
    """A fine-tuning run: the parent, the data, the time budget and the built-in recipe.

    Parameters
    ----------
    parent : str
        A bundled model name (``default``, ``accurate``) or a run folder.
    data : str
        Any folder (or one image) with ground truth that ``nucleiseg evaluate`` reads.
    out : str
        The run folder to write.
    max_minutes : float
        The time budget of the training itself (the main knob); loading, the final weight
        average, threshold tuning and export come on top (seconds to a minute).
    epochs : int or None
        A budget of epochs instead of ``max_minutes`` (each ``steps_per_epoch`` batches): the
        same run whatever else the machine is doing (the learning rate and the weight average
        follow the epochs instead of the clock).
    lr : float
        Peak learning rate of the time-based cosine schedule (Adam).
    crop_size, batch_size : int
        Training crops.
    steps_per_epoch : int
        Batches between two validations (the unit of checkpointing and weight averaging).
    average_from : float or None
        Average the weights of every epoch after this fraction of the budget (None: keep the
        best epoch).
    val_fraction : float
        Held out for validation when enough images remain (``folders.MIN_TRAIN_IMAGES``);
        otherwise validation scores the training images, and the run says so.
    augment : str
        ``parent`` (the parent recipe's augmentation) or ``light`` (flips, rotations and mild
        intensity changes only).
    tune : bool
        Re-tune the post-processing thresholds on the validation images.
    export : bool
        Write ``model.int8.onnx`` (calibrated on the training images), the form every CPU
        entry point uses.
    threads, seed : int or None, int
        Torch CPU threads (None: the library's choice) and random seed.
    """

    parent: str = "default"
    data: str = ""
    out: str = "runs/fine_tune"
    max_minutes: float = 5.0
    epochs: int | None = None
    lr: float = 1e-3
    crop_size: int = 192
    batch_size: int = 8
    steps_per_epoch: int = 20
    average_from: float | None = 0.3
    val_fraction: float = 0.2
    augment: str = "parent"
    tune: bool = True
    export: bool = True
    threads: int | None = None
    seed: int = 0


def open_parent(name_or_path: str) -> ModelBundle:
    """The parent model folder, or ValueError saying why it cannot be fine-tuned."""
    bundle = ModelBundle.open(name_or_path)
    if bundle.is_classical:
        raise ValueError("the classical model has no weights to fine-tune; start from default or a run")
    if bundle.folder is None or bundle.weights is None:
        raise ValueError(f"{name_or_path}: fine-tuning needs a model folder with weights.safetensors (not a lone ONNX file)")
    return bundle


def _light_augment() -> AugmentConfig:
    """Geometric flips and rotations with mild intensity jitter: no scale, inversion or colour changes."""
    return AugmentConfig(scale_min=0.9, scale_max=1.1, rotate_limit=15.0, shear=0.0, affine_p=0.3, elastic_p=0.0,
                         grid_distortion_p=0.0, brightness_contrast_p=0.3, gamma_p=0.2, hue_p=0.0, blur_p=0.05,
                         noise_p=0.05, grayscale_p=0.0, invert_p=0.0)


def fine_tune_recipe(ft: FineTuneConfig, parent: ModelBundle) -> TrainConfig:
    """The :class:`TrainConfig` of a fine-tune: the parent's model, normalisation, targets, loss and
    augmentation, its tuned thresholds as the starting post-processing, and ``ft``'s budget and recipe."""
    assert parent.folder is not None
    recipe: dict[str, Any] = {}
    if (parent.folder / "train.json").is_file():
        recipe = json.loads((parent.folder / "train.json").read_text(encoding="utf-8"))
    loss = from_dict(LossConfig, recipe["loss"]) if "loss" in recipe else LossConfig()
    loss = replace(loss, distill=0.0, channel_weights=loss.channel_weights[: parent.config.targets.channels])
    if ft.augment not in ("parent", "light"):
        raise ValueError(f"augment must be 'parent' or 'light', got {ft.augment!r}")
    augment = _light_augment() if ft.augment == "light" else from_dict(AugmentConfig, recipe.get("augment", {}))
    cfg = parent.config
    return TrainConfig(
        data=ft.data, out=ft.out, val_fraction=ft.val_fraction, seed=ft.seed, model=cfg.model, targets=cfg.targets,
        normalize=cfg.normalize, augment=augment, loss=loss, postprocess=cfg.postprocess, crop_size=ft.crop_size,
        batch_size=ft.batch_size, epochs=ft.epochs or 100000, steps_per_epoch=ft.steps_per_epoch, optimizer="adam", lr=ft.lr,
        scheduler="cosine", patience=100000, max_minutes=None if ft.epochs else ft.max_minutes, val_max_images=8, threads=ft.threads,
        oversample=False, train_diameter=recipe.get("train_diameter"), amp=recipe.get("amp", "auto"),
        init_weights=str(parent.weights), rescale_tolerance=cfg.infer.rescale_tolerance,
        average_from=ft.average_from, average_bn_batches=8,
    )


def _tuning_grid(post: PostprocessConfig, channels: int) -> dict[str, list[Any]]:
    """A small grid around the parent's thresholds (a few images do not support the full one)."""
    grid: dict[str, list[Any]] = {"threshold": sorted({0.4, 0.5, 0.6, post.threshold})}
    if channels >= 2:
        grid["marker_threshold"] = sorted({0.5, 0.65, 0.8, post.marker_threshold})
    return grid


def _compare(run: Path, parent: ModelBundle, cfg: TrainConfig, ft: FineTuneConfig, progress: bool,
             allow_measuring_only: bool) -> dict[str, Any]:
    """Score the parent and the fine-tuned network on the run's validation images; tune thresholds there."""
    from nucleiseg.postprocess import tune_postprocess
    from nucleiseg.training.checkpoint import load_model
    from nucleiseg.training.folders import training_split
    from nucleiseg.training.validation import predict_samples, score_probabilities

    split = json.loads((run / "split.json").read_text(encoding="utf-8"))
    data = training_split(cfg.data, cfg.val_fraction, cfg.split_seed, allow_measuring_only)
    samples = data.load(split["val"], cfg.normalize, progress=False)
    infer = replace(parent.config.infer, tta=False)
    parent_probs = predict_samples(load_model(parent.config.model, parent.weights_file()), samples, infer)
    probs = predict_samples(load_model(cfg.model, run / "weights.safetensors"), samples, infer)
    post = parent.config.postprocess
    result: dict[str, Any] = {
        "n_images": len(samples), "ids": split["val"], "val_on_train": bool(split.get("val_on_train")),
        "parent": {"model": ft.parent, **score_probabilities(parent_probs, samples, post)},
        "native_default": score_probabilities(probs, samples, post),
    }
    if ft.tune:
        post, _, _ = tune_postprocess(probs, [s.labels for s in samples], post,
                                      grid=_tuning_grid(post, cfg.targets.channels), refine={"min_confidence": [0.0, 0.5, 0.75, 0.85]})
    save_json(post, run / "thresholds.json")
    result["postprocess"] = to_dict(post)
    result["native_tuned"] = score_probabilities(probs, samples, post)
    atomic_write_text(run / "evaluation.json", json.dumps(result, indent=2))
    return result


def _keep_better_weights(run: Path) -> None:
    """Of the weight average and the best epoch, keep the one that validated higher as ``weights.safetensors``.

    A short budget averages few epochs and recomputes batch-norm statistics on few crops, which
    can score below the best single epoch; then the best epoch is kept and ``report.json`` says so.
    """
    report = json.loads((run / "report.json").read_text(encoding="utf-8"))
    average, best = report.get("average"), run / "best.safetensors"
    if not average or not best.is_file() or average["val"]["val_score"] >= report["best_val_score"]:
        return
    (run / "weights.safetensors").replace(run / "average_weights.safetensors")
    best.replace(run / "weights.safetensors")
    report["weights"] = "best epoch"
    report["average"]["kept"] = False
    atomic_write_text(run / "report.json", json.dumps(report, indent=2))


def fine_tune(ft: FineTuneConfig, progress: bool = True, device: str | None = None,
              allow_measuring_only: bool = False) -> Path:
    """Fine-tune ``ft.parent`` on ``ft.data`` and write a complete run folder (see the module docstring).

    Parameters
    ----------
    ft : FineTuneConfig
        The fine-tune.
    progress : bool
        Progress bars and lines on stderr (``progress.jsonl`` is written either way).
    device : str, optional
        ``"cpu"`` or ``"cuda"`` (default: CUDA when available).
    allow_measuring_only : bool
        Accept a measuring-only data set (benchmarks only).

    Returns
    -------
    Path
        The run folder.
    """
    from nucleiseg.training.trainer import train

    parent = open_parent(ft.parent)
    cfg = fine_tune_recipe(ft, parent)
    run = train(cfg, progress=progress, device=device, allow_measuring_only=allow_measuring_only, strict_budget=True)
    log = ProgressLog(run / PROGRESS_FILE)
    _keep_better_weights(run)
    config = ModelBundleConfig(model=cfg.model, targets=cfg.targets, normalize=cfg.normalize, postprocess=parent.config.postprocess,
                               infer=parent.config.infer, name=run.name, version=parent.config.version)
    save_json(config, run / "config.json")
    if parent.size_model is not None:  # reused: measured better than no estimate (docs/fine_tuning.md)
        shutil.copyfile(parent.size_model, run / "size_model.json")
    log.write("phase", phase="tuning")
    evaluation = _compare(run, parent, cfg, ft, progress, allow_measuring_only)
    record = {"parent": ft.parent, "parent_name": parent.name, "parent_sha256": parent.weights_hash,
              "data": str(ft.data), "recipe": to_dict(ft)}
    atomic_write_text(run / FINE_TUNE_FILE, json.dumps(record, indent=2))
    if ft.export:
        log.write("phase", phase="exporting")
        from nucleiseg.export.onnx import export_onnx

        export_onnx(run, run / "model.int8.onnx", int8=True, calib_images=16, calib_source=ft.data)
    atomic_write_text(run / "MODEL_CARD.md", model_card(run, record, evaluation))
    log.write("phase", phase="done", evaluation={k: evaluation[k] for k in ("parent", "native_default", "native_tuned")})
    return run


def budget_text(recipe: dict[str, Any]) -> str:
    """``"5 min budget"`` or ``"12-epoch budget"`` for a fine-tune recipe (a :class:`FineTuneConfig` as a dict)."""
    return f"{recipe['epochs']}-epoch budget" if recipe.get("epochs") else f"{recipe['max_minutes']:g} min budget"


def model_card(run: Path, record: dict[str, Any], evaluation: dict[str, Any]) -> str:
    """``MODEL_CARD.md`` of a fine-tuned run: parent, data, recipe, time, and the parent-vs-fine-tuned scores."""
    report = json.loads((run / "report.json").read_text(encoding="utf-8"))
    recipe = record["recipe"]
    where = "the training images themselves (too few to hold any out)" if evaluation["val_on_train"] else \
        f"{evaluation['n_images']} held-out images of the same folder"
    weights = run / "weights.safetensors"
    lines = [
        f"# Model card: `{run.name}`", "",
        f"- Fine-tuned from `{record['parent']}` (weights SHA-256 `{record['parent_sha256'][:16]}...`); architecture, "
        "normalisation, targets, inference settings and size model are the parent's.",
        f"- Weights: `weights.safetensors`, SHA-256 `{file_hash(weights)}`.",
        f"- Data: `{record['data']}`, {report['n_train']} training images (`split.json`).",
        f"- Recipe: {budget_text(recipe)}, lr {recipe['lr']} (cosine over the budget), crops "
        f"{recipe['crop_size']} x {recipe['batch_size']}, augmentation `{recipe['augment']}`, weight averaging from "
        f"{recipe['average_from']} of the run; {report['epochs_run']} epochs of {recipe['steps_per_epoch']} steps in "
        f"{report['train_seconds'] / 60:.1f} min on {report['device']} ({report['threads']} threads).",
        f"- Thresholds re-tuned on {where}: `thresholds.json`.", "",
        f"## Scores on {where}", "",
        "| model | score | AP@0.5 | F1@0.5 |", "|---|---|---|---|",
    ]
    for label, key in ((f"parent `{record['parent']}`", "parent"), ("fine-tuned, parent thresholds", "native_default"),
                       ("fine-tuned, tuned thresholds", "native_tuned")):
        r = evaluation[key]
        lines.append(f"| {label} | {r['val_score']:.4f} | {r['val_ap50']:.4f} | {r['val_f1']:.4f} |")
    lines += ["", "Native-scale scores of the network and post-processing; `nucleiseg evaluate` measures the whole "
              "pipeline on other images.", ""]
    return "\n".join(lines)
