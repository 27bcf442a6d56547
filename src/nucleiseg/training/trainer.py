"""The training loop: checkpoints, early stopping, resume, metrics CSV and curves."""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from nucleiseg import __version__
from nucleiseg.config import InferConfig, ModelBundleConfig, TrainConfig, save_json
from nucleiseg.devices import check_device
from nucleiseg.io.atomic import atomic_write_text
from nucleiseg.losses import build_loss
from nucleiseg.models import create_model
from nucleiseg.training.checkpoint import (
    file_hash,
    load_weights,
    load_training_state,
    save_training_state,
    save_weights,
    weights_metadata,
)
from nucleiseg.training.data import CropDataset, crop_loader, load_extra_samples
from nucleiseg.training.folders import training_split
from nucleiseg.training.progress import PROGRESS_FILE, ProgressLog
from nucleiseg.training.averaging import WeightAverage, finish_average
from nucleiseg.training.report import write_curves, write_metrics_csv
from nucleiseg.training.sampling import sampling_summary
from nucleiseg.training.validation import validate


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_optimizer(cfg: TrainConfig, params: Any) -> torch.optim.Optimizer:
    """Adam, AdamW, SGD (momentum 0.9, Nesterov) or RMSprop from the recipe."""
    name = cfg.optimizer.lower()
    if name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r} (adam, adamw, sgd, rmsprop)")


def time_cosine_lr(cfg: TrainConfig, elapsed_s: float) -> float:
    """Cosine learning rate over the time budget: ``lr`` at the start, ``lr / 100`` at the end.

    Used instead of per-epoch cosine when ``max_minutes`` is set, so a time-limited run anneals
    fully whatever the machine's speed (and resumes at the right point).
    """
    assert cfg.max_minutes is not None
    frac = min(1.0, elapsed_s / (cfg.max_minutes * 60))
    return cfg.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * frac)))


def build_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer) -> Any:
    """Cosine annealing over the epochs, reduce-on-plateau on the validation score, or none.

    With ``max_minutes`` set, cosine annealing follows the time budget instead (see
    :func:`time_cosine_lr`) and no epoch scheduler is returned.
    """
    name = cfg.scheduler.lower()
    if name == "cosine" and cfg.max_minutes is not None:
        return None
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(cfg.epochs, 1), eta_min=cfg.lr * 0.01)
    if name == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.5, patience=max(cfg.patience // 3, 1))
    if name == "none":
        return None
    raise ValueError(f"unknown scheduler {cfg.scheduler!r} (cosine, plateau, none)")


def cpu_supports_bf16() -> bool:
    """True when this CPU computes bfloat16 natively (AVX512-BF16 or AMX).

    oneDNN's own check (``torch.ops.mkldnn._is_mkldnn_bf16_supported``) also says yes on plain
    AVX512 CPUs, where bfloat16 is emulated and a U-Net training step is ~2.5x *slower* than in
    float32 (measured on an AVX512 Xeon without AVX512-BF16), so the CPU's own flags decide.
    """
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast_dtype(amp: str, device: str) -> torch.dtype | None:
    """The autocast dtype for ``TrainConfig.amp`` on ``device``, or None for float32.

    ``"auto"`` gives bfloat16 on CUDA and on CPUs with native bfloat16 support (emulated
    bfloat16 is slower than float32, so other CPUs train in float32); ``"bf16"`` always gives
    bfloat16; ``"off"`` gives None.
    """
    name = amp.lower()
    if name == "off":
        return None
    if name == "bf16":
        return torch.bfloat16
    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") or cpu_supports_bf16() else None
    raise ValueError(f"unknown amp {amp!r} (auto, bf16, off)")


def init_weights_file(name_or_path: str) -> Path:
    """The ``.safetensors`` file named by ``TrainConfig.init_weights``: a file, a run folder or a bundled model name."""
    path = Path(name_or_path)
    if path.suffix == ".safetensors":
        if not path.is_file():
            raise FileNotFoundError(f"{path}: init_weights file missing")
        return path
    from nucleiseg.bundle import ModelBundle

    return ModelBundle.open(name_or_path).weights_file()


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


#: Running mean of the late epochs' weights (``TrainConfig.average_from``), kept for ``--resume``.
AVERAGE_FILE = "average.safetensors"


def run_fraction(cfg: TrainConfig, epoch: int, seconds: float) -> float:
    """How far a run is after ``epoch`` (``seconds`` in): of ``max_minutes`` when set, else of ``epochs``."""
    if cfg.max_minutes is not None:
        return seconds / (cfg.max_minutes * 60)
    return epoch / max(cfg.epochs, 1)


def _finish_average(
    cfg: TrainConfig, out: Path, average: WeightAverage, model: torch.nn.Module, loader: DataLoader,
    val_samples: list[Any], bundle: ModelBundleConfig, device: str, info: dict[str, Any],
) -> dict[str, Any]:
    """Make the averaged weights the run's ``weights.safetensors`` (the best epoch becomes ``best.safetensors``)."""
    averaged = finish_average(average, model, loader, cfg.average_bn_batches, device)
    val = validate(averaged, val_samples, bundle.infer, bundle.postprocess, device)
    best = out / "weights.safetensors"
    if best.exists() and weights_metadata(best).get("epoch") != "average":  # a resumed finished run: the best epoch is already aside
        best.replace(out / "best.safetensors")
    save_weights(averaged, best, metadata={"epoch": "average", "averaged_epochs": str(average.count), "arch": bundle.model.arch})
    return {"epochs": average.count, "from": cfg.average_from, "val": val,
            "best_epoch": info["best_epoch"], "best_val_score": info["best_score"]}


def train(cfg: TrainConfig, resume: bool = False, progress: bool = True, device: str | None = None,
          allow_measuring_only: bool = False, strict_budget: bool = False) -> Path:
    """Train a model from a recipe and write a complete run folder.

    The run folder holds ``config.json`` (inference config), ``train.json`` (this recipe),
    ``split.json`` (DSB train/validation ids and, under ``extra``, the images of every
    ``extra_data`` folder used and excluded), ``weights.safetensors`` (best validation score),
    ``last.safetensors`` (+ ``.json``, for ``resume``), ``metrics.csv``, ``curves.png`` and
    ``report.json``, and ``progress.jsonl`` (:mod:`nucleiseg.training.progress`: structured
    events as it goes, for the web app and napari).

    ``cfg.data`` is a DSB-layout folder or any folder (or one image) with ground truth that
    ``nucleiseg evaluate`` reads (:func:`~nucleiseg.training.folders.training_split`); with
    too few images to hold some out, validation scores the training images and ``split.json``
    says ``"val_on_train": true``.

    Parameters
    ----------
    cfg : TrainConfig
        The recipe.
    resume : bool
        Continue from ``last.safetensors`` in ``cfg.out`` if it exists.
    progress : bool
        Show progress bars.
    device : str, optional
        ``"cuda"`` or ``"cpu"``; defaults to CUDA when available.
    allow_measuring_only : bool
        Accept a measuring-only folder as ``cfg.data`` (benchmarks that fine-tune on a
        committed part of MoNuSeg and score on the rest; never a bundled model).
    strict_budget : bool
        With ``cfg.max_minutes``, stop in the middle of an epoch when the time is up (the epoch
        is then validated as usual) instead of at the end of the epoch that passes it.

    Returns
    -------
    Path
        The run folder.
    """
    device = check_device(device) if device else ("cuda" if torch.cuda.is_available() else "cpu")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)

    data = _prepare_data(cfg, out, progress, allow_measuring_only)
    bundle, train_samples, val_samples = data.bundle, data.train_samples, data.val_samples
    steps = cfg.steps_per_epoch or max(1, math.ceil(len(train_samples) / cfg.batch_size))
    dataset = CropDataset(
        train_samples, cfg.crop_size, cfg.targets, cfg.augment, steps * cfg.batch_size,
        gap_weight=cfg.loss.gap_weight, oversample=cfg.oversample, seed=cfg.seed,
    )
    loader = crop_loader(dataset, cfg.batch_size, cfg.workers, pin_memory=device.startswith("cuda"))
    if not resume:
        (out / PROGRESS_FILE).unlink(missing_ok=True)
    log = ProgressLog(out / PROGRESS_FILE)
    log.write("start", epochs=cfg.epochs, max_minutes=cfg.max_minutes, steps=steps, n_train=len(train_samples),
              n_val=len(val_samples), val_on_train=data.split.val_on_train, resume=resume)

    model = create_model(bundle.model.arch, bundle.model.in_channels, bundle.model.out_channels, **bundle.model.params)
    model.to(device=device, memory_format=torch.channels_last)  # 10-40 % faster on CPU and GPU
    optimizer = build_optimizer(cfg, model.parameters())
    scheduler = build_scheduler(cfg, optimizer)
    loss_fn = build_loss(cfg.loss).to(device)

    info: dict[str, Any] = {"epoch": 0, "best_score": -1.0, "best_epoch": 0, "history": [], "seconds": 0.0}
    last = out / "last.safetensors"
    init_file = init_weights_file(cfg.init_weights) if cfg.init_weights else None
    if resume and last.exists():
        info = load_training_state(last, model, optimizer, scheduler)
    elif init_file is not None:
        load_weights(model, init_file)
    average = WeightAverage(model) if cfg.average_from is not None else None
    if average is not None and resume and last.exists() and (out / AVERAGE_FILE).exists():
        average.load(out / AVERAGE_FILE)
        if average.count != int(info.get("averaged", 0)) and progress:
            tqdm.write(f"{out / AVERAGE_FILE}: holds {average.count} epochs, the run state {info.get('averaged', 0)}; continuing")
    start_time = time.monotonic() - float(info["seconds"])
    amp_dtype = autocast_dtype(cfg.amp, device)
    amp_device = "cuda" if device.startswith("cuda") else "cpu"
    timed_cosine = cfg.scheduler.lower() == "cosine" and cfg.max_minutes is not None

    for epoch in range(int(info["epoch"]) + 1, cfg.epochs + 1):
        model.train()
        dataset.set_epoch(epoch)
        torch.manual_seed(cfg.seed * 100003 + epoch)
        losses = _run_epoch(cfg, epoch, model, loader, optimizer, loss_fn, device, log, steps, start_time,
                            (amp_dtype, amp_device, timed_cosine), progress, strict_budget)
        val = validate(model, val_samples, bundle.infer, bundle.postprocess, device)
        row = {"epoch": epoch, "train_loss": float(np.mean(losses)), "lr": optimizer.param_groups[0]["lr"], **val}
        row["seconds"] = time.monotonic() - start_time
        info["history"].append(row)
        if scheduler is not None:
            scheduler.step(val["val_score"]) if cfg.scheduler == "plateau" else scheduler.step()
        if val["val_score"] > info["best_score"]:
            info["best_score"], info["best_epoch"] = val["val_score"], epoch
            save_weights(model, out / "weights.safetensors", metadata={"epoch": str(epoch), "arch": bundle.model.arch})
        info["epoch"], info["seconds"] = epoch, row["seconds"]
        averaging = None  # the mean, once the run is past cfg.average_from
        if average is not None and cfg.average_from is not None and run_fraction(cfg, epoch, row["seconds"]) >= cfg.average_from:
            averaging = average
            averaging.update(model)
            info["averaged"] = averaging.count
        save_training_state(last, model, optimizer, scheduler, info)
        if averaging is not None:  # after last.safetensors: a crash in between leaves one epoch out of the mean, never in twice
            averaging.save(out / AVERAGE_FILE)
        write_metrics_csv(out / "metrics.csv", info["history"])
        log.write("epoch", **row, steps=len(losses), best_score=info["best_score"], best_epoch=info["best_epoch"])
        if progress:
            tqdm.write(
                f"epoch {epoch}: loss {row['train_loss']:.4f}  val score {val['val_score']:.4f}  "
                f"AP50 {val['val_ap50']:.4f}  best {info['best_score']:.4f} (epoch {info['best_epoch']})"
            )
        if epoch - int(info["best_epoch"]) >= cfg.patience:
            tqdm.write(f"early stop: no improvement for {cfg.patience} epochs") if progress else None
            break
        if cfg.max_minutes is not None and row["seconds"] > cfg.max_minutes * 60:
            tqdm.write(f"time budget of {cfg.max_minutes} min reached") if progress else None
            break

    write_curves(out / "curves.png", info["history"])
    averaged = None
    if average is not None and average.count > 0:
        log.write("phase", phase="averaging")
        averaged = _finish_average(cfg, out, average, model, loader, val_samples, bundle, device, info)
    report = _report(cfg, info, data, dataset, device, amp_dtype, init_file, averaged)
    atomic_write_text(out / "report.json", json.dumps(report, indent=2))
    log.write("end", best_val_score=info["best_score"], epochs_run=info["epoch"], weights=report["weights"])
    return out


@dataclass
class _RunData:
    """What :func:`train` trains and validates on (see :func:`_prepare_data`)."""

    bundle: ModelBundleConfig
    split: Any
    train_ids: list[str]
    val_ids: list[str]
    train_samples: list[Any]
    val_samples: list[Any]
    extra_samples: list[Any]
    teacher: Any


def _prepare_data(cfg: TrainConfig, out: Path, progress: bool, allow_measuring_only: bool) -> _RunData:
    """Split and load the data, write ``train.json``, ``config.json`` and ``split.json``."""
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
    return _RunData(bundle, split_data, train_ids, val_ids, train_samples, val_samples, extra_samples, teacher)


def _run_epoch(cfg: TrainConfig, epoch: int, model: torch.nn.Module, loader: Any, optimizer: Any, loss_fn: Any,
               device: str, log: ProgressLog, steps: int, start_time: float, amp: tuple[Any, str, bool],
               progress: bool, strict_budget: bool) -> list[float]:
    """One pass over ``loader``; the loss of every step (stops early at a strict time budget)."""
    amp_dtype, amp_device, timed_cosine = amp
    losses = []
    bar = tqdm(loader, desc=f"epoch {epoch}/{cfg.epochs}", disable=not progress, leave=False)
    for step, (images, targets, weights) in enumerate(bar, 1):
        images = images.to(device).contiguous(memory_format=torch.channels_last)
        targets, weights = targets.to(device), weights.to(device)
        if timed_cosine:
            for group in optimizer.param_groups:
                group["lr"] = time_cosine_lr(cfg, time.monotonic() - start_time)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=amp_device, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            logits = model(images)
        loss = loss_fn(logits.float(), targets, weights)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{np.mean(losses):.4f}")
        log.step(epoch=epoch, step=step, steps=steps, loss=float(np.mean(losses)), elapsed_s=time.monotonic() - start_time)
        if strict_budget and cfg.max_minutes is not None and time.monotonic() - start_time > cfg.max_minutes * 60:
            break
    return losses


def _report(cfg: TrainConfig, info: dict[str, Any], data: _RunData, dataset: Any, device: str, amp_dtype: Any,
            init_file: Path | None, averaged: Any) -> dict[str, Any]:
    """The contents of ``report.json``."""
    report = {
        "best_epoch": info["best_epoch"],
        "best_val_score": info["best_score"],
        "epochs_run": info["epoch"],
        "train_seconds": info["seconds"],
        "n_train": len(data.train_ids),
        "val_on_train": data.split.val_on_train,
        "n_train_extra": len(data.extra_samples),
        "init_weights": None if init_file is None else {"source": cfg.init_weights, "sha256": file_hash(init_file)},
        "teacher": data.teacher,
        "n_val_per_epoch": len(data.val_ids),
        "sampling": sampling_summary(dataset.samples, dataset.clusters, dataset.weights),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "autocast": str(amp_dtype).replace("torch.", "") if amp_dtype is not None else "off",
        "torch": torch.__version__,
        "nucleiseg": __version__,
        "final": info["history"][-1] if info["history"] else None,
        "weights": "best epoch" if averaged is None else "average",
        "average": averaged,
    }
    return report
