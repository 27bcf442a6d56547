"""A training run's data: the split, the loaded samples and the set-up files of its run folder.

:func:`prepare_run_data` writes ``train.json`` (the recipe), ``config.json`` (the inference
configuration, :func:`bundle_config`) and ``split.json``, then loads the images.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from nucleiseg import __version__
from nucleiseg.config import InferConfig, ModelBundleConfig, TrainConfig, save_json
from nucleiseg.io.atomic import atomic_write_text
from nucleiseg.training.data import TrainingSample, load_extra_samples
from nucleiseg.training.folders import TrainingSplit, training_split


def bundle_config(cfg: TrainConfig) -> ModelBundleConfig:
    """The inference-side configuration saved as ``config.json`` beside the weights."""
    model = replace(cfg.model, in_channels=cfg.normalize.channels, out_channels=cfg.targets.channels)
    infer = InferConfig()
    if cfg.rescale_tolerance is not None:
        infer = replace(infer, rescale_tolerance=cfg.rescale_tolerance)
    if cfg.train_diameter is not None:  # trained at one scale: always bring images to it
        infer = replace(infer, rescale=True, target_diameter=cfg.train_diameter, rescale_tolerance=1.1)
    return ModelBundleConfig(
        model=model,
        targets=cfg.targets,
        normalize=cfg.normalize,
        postprocess=cfg.postprocess,
        infer=infer,
        name=Path(cfg.out).name,
        version=__version__,
    )


@dataclass
class RunData:
    """What :func:`~nucleiseg.training.trainer.train` trains and validates on (see :func:`prepare_run_data`)."""

    bundle: ModelBundleConfig
    split: TrainingSplit
    train_ids: list[str]
    val_ids: list[str]
    train_samples: list[TrainingSample]
    val_samples: list[TrainingSample]
    extra_samples: list[TrainingSample]
    teacher: dict[str, Any] | None


def prepare_run_data(cfg: TrainConfig, out: Path, progress: bool, allow_measuring_only: bool) -> RunData:
    """Split and load the data, write ``train.json``, ``config.json`` and ``split.json``.

    Parameters
    ----------
    cfg : TrainConfig
        The recipe.
    out : Path
        The run folder (exists).
    progress : bool
        Show progress bars while loading.
    allow_measuring_only : bool
        Accept a measuring-only folder as ``cfg.data`` (see :func:`~nucleiseg.training.trainer.train`).

    Returns
    -------
    RunData
        The split, the loaded training and (per-epoch) validation samples, and the teacher's record.
    """
    split_data = training_split(cfg.data, cfg.val_fraction, cfg.split_seed, allow_measuring_only)
    train_ids, val_ids = split_data.train, split_data.val
    if cfg.limit_images:
        train_ids = train_ids[: cfg.limit_images]
    extra_samples, extra_records = [], []
    for extra in cfg.extra_data:  # checked and loaded first: a bad folder fails before any output
        samples, record = load_extra_samples(extra, cfg.normalize, progress, cfg.train_diameter, cfg.workers)
        extra_samples += samples
        extra_records.append(record)
    save_json(cfg, out / "train.json")
    bundle = bundle_config(cfg)
    save_json(bundle, out / "config.json")
    split: dict[str, Any] = {"seed": cfg.split_seed, "train": train_ids, "val": val_ids}
    if split_data.val_on_train:
        split["val_on_train"] = True
    if extra_records:
        split["extra"] = extra_records
    atomic_write_text(out / "split.json", json.dumps(split, indent=1))
    val_ids = val_ids[: cfg.val_max_images] if cfg.val_max_images else val_ids  # per-epoch subset

    train_samples = split_data.load(train_ids, cfg.normalize, progress, cfg.train_diameter, cfg.workers) + extra_samples
    val_samples = (train_samples[: len(val_ids)] if split_data.val_on_train and not cfg.limit_images and not extra_samples
                   else split_data.load(val_ids, cfg.normalize, progress, cfg.train_diameter, cfg.workers))  # selection only
    teacher = None
    if cfg.teacher is not None:  # soft targets: the teacher's probabilities of every training image
        from nucleiseg.training.distill import add_teacher_probabilities

        teacher = add_teacher_probabilities(train_samples, cfg.teacher, cfg.normalize, bundle.model.out_channels, progress)
    return RunData(bundle, split_data, train_ids, val_ids, train_samples, val_samples, extra_samples, teacher)
