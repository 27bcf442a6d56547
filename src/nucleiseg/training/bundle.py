"""Ship a trained run inside the package: config, weights, thresholds, model card, reference output."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from nucleiseg.config import ModelBundleConfig, load_json, save_json
from nucleiseg.bundle import ONNX_FILES, WEIGHTS_DIR
from nucleiseg.inference.segmenter import Segmenter
from nucleiseg.inference.size import SIZE_MODEL_FILE
from nucleiseg.io.atomic import atomic_write_text
from nucleiseg.io.labels import discover_inputs, load_item_gt
from nucleiseg.io.images import read_image
from nucleiseg.metrics import match_labels
from nucleiseg.bundle import file_hash


def reference_outputs(model_dir: str | Path, examples: str | Path) -> dict[str, dict[str, Any]]:
    """Nucleus count (and score, where ground truth exists) of a model on each example image."""
    segmenter = Segmenter.from_pretrained(model_dir)
    out = {}
    for item in discover_inputs([Path(examples)]):
        labels = segmenter.segment(read_image(item.image_path), keep_probabilities=False).labels
        record: dict[str, Any] = {"count": int(labels.max())}
        if item.gt_path is not None:
            record["score"] = round(match_labels(load_item_gt(item), labels).competition_score, 4)
        out[item.id] = record
    return out


def _suite_section(suite: dict[str, Any] | None) -> list[str]:
    """The accuracy-suite part of a model card (from ``nucleiseg validate RUN --suite``), led by "unseen kinds"."""
    if suite is None:
        return ["## Accuracy suite", "", "Not run for this model: `nucleiseg validate RUN --suite` measures it.", ""]
    from nucleiseg.benchmark.accuracy import format_markdown

    s = suite["summary"]
    return [
        "## Accuracy suite: image kinds it was not tuned on",
        "",
        f"**Unseen kinds: {s['unseen_kinds']:.4f}** (classical {s['baseline_unseen_kinds']:.4f}); "
        f"DSB validation split: {s['validation']:.4f} (classical {s['baseline_validation']:.4f}).",
        "",
        format_markdown(suite, suite.get("command", "")),
    ]


def _extra_data(train: dict[str, Any], report: dict[str, Any]) -> str:
    """", plus N images of <folder>" for the recipe's extra training folders (held-out lists excluded)."""
    n_extra = int(report.get("n_train_extra", 0))
    if not n_extra:
        return ""
    names = ", ".join(f"`{Path(e['path']).name}`" for e in train.get("extra_data", []))
    return f", plus {n_extra} images of {names} (CC0; held-out lists in `nucleiseg/io/splits/` never loaded)"


#: The limits paragraph of a bundled model's card.
DSB_LIMITS = (
    "Trained only on DSB 2018 stage 1 training images (mostly fluorescence, some brightfield and H&E "
    "tissue). Expect lower accuracy on other modalities, 3D data or very crowded tissue; check with "
    "`nucleiseg evaluate` on a few annotated images of your own."
)


def model_card(name: str, train: dict[str, Any], report: dict[str, Any], evaluation: dict[str, Any], sha: str,
               suite: dict[str, Any] | None = None, trained_on: str | None = None, limits: str = DSB_LIMITS) -> str:
    """A run's ``MODEL_CARD.md``: architecture, weights hash, data, training, accuracy suite, validation, limits.

    Parameters
    ----------
    name : str
        Model name.
    train, report, evaluation : dict
        ``train.json``, ``report.json`` and ``evaluation.json`` of the run; ``report`` and
        ``evaluation`` may be empty (a run stopped before it reported or was validated).
    sha : str
        SHA-256 of ``weights.safetensors``.
    suite : dict, optional
        ``accuracy.json`` (``nucleiseg validate --suite``).
    trained_on : str, optional
        The data line; default: the DSB training split of a bundled recipe, ``configs/<name>.yaml``.
    limits : str
        The limits paragraph.
    """
    validation = _validation_table(evaluation)
    model, trained_on, training = _data_lines(name, train, report, evaluation, trained_on)
    return "\n".join([
        f"# Model card: `{name}`",
        "",
        f"- Architecture: `{model.get('arch')}` {json.dumps(model.get('params', {}))}, targets `{train.get('targets', {}).get('mode')}`.",
        f"- Weights: `weights.safetensors`, SHA-256 `{sha}`.",
        f"- {trained_on}",
        training,
        "- Post-processing thresholds tuned on the validation split: `thresholds.json`.",
        "",
        *_suite_section(suite),
        "## Validation figures",
        "",
        "Reproduce: `nucleiseg validate runs/" + name + " --tta` on a run trained with the recipe.",
        "",
        *validation,
        "",
        "## Limits",
        "",
        limits,
        "",
    ])


def _data_lines(name: str, train: dict[str, Any], report: dict[str, Any], evaluation: dict[str, Any],
                trained_on: str | None) -> tuple[dict[str, Any], str, str]:
    """``(model, data line, training line)`` of a model card: a trained run, or an ensemble with one line per member.

    The parameters are those of :func:`model_card`; a given ``trained_on`` is kept as it is.
    """
    model = train.get("model", {})
    members = report.get("members")  # an ensemble (nucleiseg ensemble): one line per member
    if members:
        model = {"arch": "ensemble", "params": {"members": len(members)}}
        trained_on = trained_on if trained_on is not None else (
            f"The mean of the probabilities of {len(members)} models, each listed below; validation split of "
            f"{evaluation['n_images']} images fixed by `split_ids(ids, {train['val_fraction']}, {train['split_seed']})`, "
            "the same for every member (`split.json`)."
        )
        return model, trained_on, "\n".join(_member_line(i, m) for i, m in enumerate(members))
    trained_on = trained_on if trained_on is not None else (
        f"Trained on DSB 2018 stage1_train (CC0), {report['n_train']} images{_extra_data(train, report)}; validation split of "
        f"{evaluation['n_images']} images fixed by `split_ids(ids, {train['val_fraction']}, {train['split_seed']})` "
        f"(`split.json` of the run). Recipe: `configs/{name}.yaml` (`train.json` here)."
    )
    return model, trained_on, _training_line(report)


def _validation_table(evaluation: dict[str, Any]) -> list[str]:
    """The validation figures of a model card: one table row per scored setting of ``evaluation.json``."""
    rows = []
    for key, label in [("native_default", "native scale, default thresholds"), ("native_tuned", "native scale, tuned thresholds"),
                       ("native_tuned_tta", "native scale, tuned thresholds, 8-fold TTA"),
                       ("pipeline", "full pipeline (scale normalisation), tuned")]:
        if key in evaluation:
            r = evaluation[key]
            rows.append(f"| {label} | {r['val_score']:.4f} | {r['val_ap50']:.4f} | {r['val_f1']:.4f} | {r['val_mean_iou_seed']:.4f} |")
    if not rows:
        return ["Not validated (stopped during validation)."]
    return ["| setting | competition score | AP@0.5 | F1@0.5 | mean IoU (seed) |", "|---|---|---|---|---|", *rows]


def _training_line(report: dict[str, Any]) -> str:
    """The training line of a trained run's model card (its ``report.json``; empty: stopped early)."""
    if not report:
        return "- Training was stopped before it wrote its report; the weights are those of the best epoch so far."
    where = f"{report['train_seconds'] / 60:.1f} min on {report['device']} ({report['threads']} threads), torch {report['torch']}"
    avg = report.get("average")  # TrainConfig.average_from: the weights are the mean of the last epochs
    if not avg:
        return f"- Training: {report['epochs_run']} epochs, best at epoch {report['best_epoch']}, {where}."
    return (f"- Training: {report['epochs_run']} epochs, {where}; the weights are the average of the last "
            f"{avg['epochs']} epochs (validation {avg['val']['val_score']:.4f} on {report['n_val_per_epoch']} images; "
            f"best single epoch {avg['best_epoch']}: {avg['best_val_score']:.4f}).")


def _member_line(index: int, member: dict[str, Any]) -> str:
    """One ensemble member on a model card: architecture, weights hash, data and training time."""
    train, report, model = member.get("train", {}), member.get("report", {}), member["model"]
    where = (f"{report['train_seconds'] / 60:.1f} min on {report['device']}, {report['epochs_run']} epochs"
             if report else "training report missing")
    if train.get("init_weights"):
        where += f", fine-tuned from `{train['init_weights']}`"
    data = f"{report['n_train']} DSB images{_extra_data(train, report)}" if report else "see its train.json"
    return (f"- Member {index}: `{member['run']}`, `{model['arch']}` {json.dumps(model.get('params', {}))}, "
            f"SHA-256 `{member['weights_sha256'][:16]}...`; trained on {data}; {where}.")


#: Files a run may hold besides its weights that belong to those weights alone.
FORMS = (SIZE_MODEL_FILE, *ONNX_FILES.values())


def bundle_run(run_dir: str | Path, name: str = "default", examples: str | Path | None = None,
               dest_root: str | Path = WEIGHTS_DIR) -> Path:
    """Copy a run into ``dest_root/name`` with a model card and reference outputs on the examples.

    Parameters
    ----------
    run_dir : path
        Run folder with ``weights.safetensors``, ``config.json``, ``train.json``,
        ``report.json`` and ``evaluation.json`` (from ``nucleiseg validate``); its
        ``accuracy.json`` (``nucleiseg validate --suite``), when present, goes into the model card.
        Its :data:`FORMS` (ONNX exports, ``size_model.json``) are copied too, and those of a
        model bundled before under the same name are removed, so the reference outputs are
        computed with this model's files only.
    name : str
        Bundled model name.
    examples : path, optional
        Folder of example images; their counts and scores are stored in ``reference.json``.
    """
    run = Path(run_dir)
    dest = Path(dest_root) / name
    dest.mkdir(parents=True, exist_ok=True)
    config = load_json(ModelBundleConfig, run / "config.json")
    config.name = name
    save_json(config, dest / "config.json")
    shutil.copyfile(run / "weights.safetensors", dest / "weights.safetensors")
    if (run / "thresholds.json").is_file():
        shutil.copyfile(run / "thresholds.json", dest / "thresholds.json")
    for extra in ("train.json", "split.json", "evaluation.json", "report.json", "accuracy.json"):
        if extra != "accuracy.json" or (run / extra).is_file():
            shutil.copyfile(run / extra, dest / extra)
    for form in FORMS:  # the run's exported forms and size model; a previous model's are removed, never reused
        if (run / form).is_file():
            shutil.copyfile(run / form, dest / form)
        elif (dest / form).exists():
            (dest / form).unlink()
    sha = file_hash(dest / "weights.safetensors")
    suite = json.loads((run / "accuracy.json").read_text()) if (run / "accuracy.json").is_file() else None
    card = model_card(name, json.loads((run / "train.json").read_text()), json.loads((run / "report.json").read_text()),
                      json.loads((run / "evaluation.json").read_text()), sha, suite)
    atomic_write_text(dest / "MODEL_CARD.md", card)
    if examples is not None:
        reference = {"sha256": sha, "examples": reference_outputs(dest, examples)}
        atomic_write_text(dest / "reference.json", json.dumps(reference, indent=2))
    return dest


def main(argv: list[str] | None = None) -> int:
    """``python -m nucleiseg.training.bundle RUN_DIR [NAME] [EXAMPLES_DIR]``: bundle a run."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m nucleiseg.training.bundle",
                                     description="Copy a trained run into the package as a bundled model, with its model card and reference outputs.")
    parser.add_argument("run_dir", help="run folder (weights, config, train/report/evaluation JSON)")
    parser.add_argument("name", nargs="?", default="default", help="bundled model name (default: default)")
    parser.add_argument("examples", nargs="?", default="examples", help="example images for reference.json (default: examples)")
    args = parser.parse_args(argv)
    folder = bundle_run(args.run_dir, args.name, args.examples)
    print(f"bundled {args.run_dir} as {folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
