"""Evaluate a run folder on its own validation split; tune post-processing thresholds there."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nucleiseg.config import ModelBundleConfig, PostprocessConfig, load_json, save_json, to_dict
from nucleiseg.bundle import ModelBundle
from nucleiseg.inference.segmenter import Segmenter
from nucleiseg.io.atomic import atomic_write_text
from nucleiseg.metrics import evaluate_pairs
from nucleiseg.postprocess import tune_postprocess
from nucleiseg.training.checkpoint import load_model
from nucleiseg.training.data import TrainingSample, load_samples
from nucleiseg.training.validation import predict_samples, score_probabilities

if TYPE_CHECKING:
    import torch


def validation_ids(run_dir: str | Path) -> list[str]:
    """The validation ids recorded in a run folder's ``split.json``."""
    path = Path(run_dir) / "split.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no split.json (only run folders from `nucleiseg train` have one)")
    return list(json.loads(path.read_text())["val"])


def evaluate_run(
    run_dir: str | Path,
    data: str | Path,
    tune: bool = False,
    tta: bool = False,
    pipeline: bool = True,
    max_images: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Score a run on its validation split, optionally tuning thresholds first.

    Parameters
    ----------
    run_dir : path
        Run folder (``config.json``, ``weights.safetensors``, ``split.json``).
    data : path
        The DSB folder the run was trained on.
    tune : bool
        Grid-search the post-processing settings on the validation probabilities (native
        scale) and write them to ``run_dir/thresholds.json``, which the segmenter then loads.
    tta : bool
        Also score with 8-fold test-time augmentation.
    pipeline : bool
        Also score the full user pipeline (:class:`Segmenter` with its default settings: scale
        normalisation, tuned thresholds, no TTA) on the validation images.
    max_images : int, optional
        Use only the first N validation ids.
    progress : bool
        Show progress bars.

    Returns
    -------
    dict
        Scores keyed by setting (``native_default``, ``native_tuned``, ``native_tuned_tta``,
        ``pipeline``), each with score, AP@0.5, F1, mean IoU; also the tuned
        settings and seconds.
    """
    bundle = ModelBundle.open(run_dir)
    if bundle.folder is None:
        raise ValueError(f"{run_dir}: validation needs a run folder")
    folder = bundle.folder
    config = load_json(ModelBundleConfig, folder / "config.json")  # the run's own thresholds, before any tuning
    ids = validation_ids(folder)[:max_images]
    samples = load_samples(data, ids, config.normalize, progress)
    model = load_model(config.model, folder / "weights.safetensors")
    results: dict[str, Any] = {"run": str(folder), "n_images": len(ids)}
    t = time.perf_counter()
    results.update(_native_scores(model, samples, config, folder / "thresholds.json", tune, tta, progress))
    if pipeline:
        results["pipeline"] = _pipeline_scores(folder, data, ids)
    results["seconds"] = round(time.perf_counter() - t, 1)
    atomic_write_text(folder / "evaluation.json", json.dumps(results, indent=2))
    return results


def _native_scores(
    model: torch.nn.Module, samples: Sequence[TrainingSample], config: ModelBundleConfig, tuned_file: Path, tune: bool,
    tta: bool, progress: bool,
) -> dict[str, Any]:
    """Scores of the network's own probabilities (native scale): default, tuned and TTA settings.

    Parameters
    ----------
    model : torch.nn.Module
        The run's network.
    samples : list
        Validation samples (:func:`~nucleiseg.training.data.load_samples`).
    config : ModelBundleConfig
        The run's own configuration (its thresholds before any tuning).
    tuned_file : Path
        ``thresholds.json`` of the run: written when ``tune``, else read when present.
    tune, tta, progress : bool
        As in :func:`evaluate_run`.

    Returns
    -------
    dict
        ``native_default``, ``tuning_top5`` (when tuned), ``postprocess``, ``native_tuned`` and
        ``native_tuned_tta`` (when ``tta``), in that order.
    """
    probs = predict_samples(model, samples, config.infer, progress=progress)
    scores: dict[str, Any] = {"native_default": score_probabilities(probs, samples, config.postprocess)}
    post = config.postprocess
    if tune:
        post, best, table = tune_postprocess(probs, [s.labels for s in samples], config.postprocess, progress=progress)
        save_json(post, tuned_file)
        scores["tuning_top5"] = table.head(5).to_dict(orient="records")
    elif tuned_file.is_file():
        post = load_json(PostprocessConfig, tuned_file)
    scores["postprocess"] = to_dict(post)
    scores["native_tuned"] = score_probabilities(probs, samples, post)
    if tta:
        probs_tta = predict_samples(model, samples, config.infer, tta=True, progress=progress)
        scores["native_tuned_tta"] = score_probabilities(probs_tta, samples, post)
    return scores


def _pipeline_scores(folder: Path, data: str | Path, ids: list[str]) -> dict[str, float]:
    """Scores of the full user pipeline (:class:`Segmenter` with its default settings) on the validation images."""
    from nucleiseg.io.dsb import load_sample

    segmenter = Segmenter.from_pretrained(folder)
    items = []
    for sample_id in ids:
        raw = load_sample(Path(data) / sample_id, check=False)
        items.append((sample_id, raw.labels, segmenter.segment(raw.image, keep_probabilities=False).labels))
    summary = evaluate_pairs(items).summary
    return {
        "val_score": float(summary["score_macro"]), "val_ap50": float(summary["ap50"]),
        "val_f1": float(summary["f1_50"]), "val_mean_iou_seed": float(summary["mean_iou_seed"]),
    }


def format_results(results: dict[str, Any]) -> str:
    """A small text table of :func:`evaluate_run` results."""
    lines = [f"validation images: {results['n_images']}", f"{'setting':<18} {'score':>7} {'AP50':>7} {'F1':>7} {'mIoU':>7}"]
    for key in ("native_default", "native_tuned", "native_tuned_tta", "pipeline"):
        if key in results:
            r = results[key]
            lines.append(
                f"{key:<18} {r['val_score']:7.4f} {r['val_ap50']:7.4f} {r['val_f1']:7.4f} {r['val_mean_iou_seed']:7.4f}"
            )
    return "\n".join(lines)

