"""The Performance screen's job: segment a whole dataset with one or two models and score them.

Each model's labels are written as ``<id>_masks.tif`` into the job's folder, then scored with
:func:`nucleiseg.api.evaluate_paths` against the dataset: the very function behind
``nucleiseg evaluate --gt DATASET --pred PREDICTIONS``, so the figures are the CLI's. The job keeps
a small thumbnail per image and the prediction files, from which the per-image difference views
(extra predicted pixels blue, missed ones red) are drawn on request.
"""

from __future__ import annotations

import io
import shlex
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from nucleiseg.app.datasets import Dataset, thumbnail
from nucleiseg.app.jobs import Job, JobFailed
from nucleiseg.app.limits import api_error
from nucleiseg.app.render import png_bytes
from nucleiseg.app.runs import ModelRegistry
from nucleiseg.io.layout import output_name

__all__ = ["CSV_COLUMNS", "diff_png", "evaluation_command", "evaluation_runner", "table_csv"]

#: Per-image columns of the table (one set per model).
CSV_COLUMNS = ("score", "ap50", "f1_50", "pq", "n_true", "n_pred", "tp50", "fp50", "fn50")


def evaluation_command(dataset: Dataset, models: list[str], tta: bool) -> str:
    """The equivalent command lines (segment, then evaluate) for each model."""
    steps = []
    for k, model in enumerate(models):
        segment = ["nucleiseg", "segment", f"<{dataset.name}>", "--model", model, "-o", f"pred{k}"] + (["--tta"] if tta else [])
        steps.append(f"{shlex.join(segment)} && nucleiseg evaluate --gt <{dataset.name}> --pred pred{k}")
    return " ; ".join(steps)


def _clean(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return round(value, 5) if np.isfinite(value) else None
    return value


def evaluation_runner(registry: ModelRegistry, dataset: Dataset, models: list[str], tta: bool, work: Path, max_pixels: int,
                      ids: list[str] | None = None):
    """The job runner scoring ``models`` on ``dataset`` (see the module docstring); only images ``ids`` when given."""

    def run(job: Job) -> dict[str, Any] | None:
        from nucleiseg.api import evaluate_paths
        from nucleiseg.io.images import ImageReadError, read_image, write_labels
        from nucleiseg.io.labels import discover_inputs

        items = [i for i in discover_inputs([dataset.path]) if i.gt_path is not None and (ids is None or i.id in ids)]
        if not items:
            raise JobFailed(f"dataset '{dataset.name}' has no images with ground truth to score against")
        work.mkdir(parents=True, exist_ok=True)
        job.private.update(items=items, work=work, on_forget=lambda: shutil.rmtree(work, ignore_errors=True))
        (work / "thumbs").mkdir(exist_ok=True)
        total, done, start = len(items) * len(models), 0, time.monotonic()
        job.update(phase="segmenting", done=0, total=total, images=len(items), models=models)
        for m, name in enumerate(models):
            job.update(model=name, model_index=m)
            segmenter = registry.get(name)
            infer = replace(segmenter.config.infer, tta=tta or segmenter.config.infer.tta)
            for k, item in enumerate(items):
                if job.stop_requested:
                    return None
                try:
                    image = read_image(item.image_path, max_pixels=max_pixels)
                except ImageReadError as exc:
                    raise JobFailed(f"{item.id}: {exc.problem}") from None
                labels = segmenter.segment(image, infer, keep_probabilities=False).labels
                target = work / f"m{m}" / output_name(item.id, "masks")
                target.parent.mkdir(parents=True, exist_ok=True)
                write_labels(target, labels)
                if m == 0:
                    (work / "thumbs" / f"{k}.png").write_bytes(thumbnail(image, side=64))
                done += 1
                rate = (time.monotonic() - start) / done
                job.update(done=done, eta_s=round(rate * (total - done), 1), current=item.id)
        job.update(phase="scoring")
        reports = [evaluate_paths(dataset.path, work / f"m{m}") if ids is None else _score_items(items, work / f"m{m}")
                   for m in range(len(models))]
        return _result(models, items, reports)

    return run


def _score_items(items: list, pred_dir: Path) -> Any:
    """The evaluation report of the predictions in ``pred_dir`` on ``items`` only (a subset of a dataset)."""
    from nucleiseg.io.images import read_labels
    from nucleiseg.io.labels import load_item_gt
    from nucleiseg.metrics import evaluate_pairs

    report = evaluate_pairs((item.id, load_item_gt(item), read_labels(pred_dir / output_name(item.id, "masks"))) for item in items)
    report.summary.update(missing_predictions=[], unmatched_predictions=[])
    return report


def _result(models: list[str], items: list, reports: list) -> dict[str, Any]:
    """Summary, per-threshold curve and per-image rows of every model."""
    out_models = []
    for name, report in zip(models, reports, strict=True):
        s = report.summary
        out_models.append({
            "name": name,
            "summary": {k: _clean(s[k]) for k in ("n_images", "score_macro", "score_micro", "ap50", "f1_50", "pq",
                                                    "mean_iou_seed", "tp50", "fp50", "fn50", "n_true", "n_pred")},
            "per_threshold": [{"threshold": float(t), "score": _clean(v)} for t, v in s["score_macro_per_threshold"].items()],
            "missing_predictions": s["missing_predictions"],
        })
    tables = [r.per_image.set_index("id") for r in reports]
    rows = []
    for k, item in enumerate(items):
        row: dict[str, Any] = {"index": k, "id": item.id, "models": []}
        for table in tables:
            if item.id in table.index:
                rec = table.loc[item.id]
                row["models"].append({c: _clean(rec[c]) for c in CSV_COLUMNS})
            else:
                row["models"].append(None)
        rows.append(row)
    return {"models": out_models, "images": rows}


def table_csv(result: dict[str, Any]) -> str:
    """The per-image table as CSV: ``id`` then ``<model>:<column>`` for every model, worst first."""
    names = [m["name"] for m in result["models"]]
    header = ["id"] + [f"{n}:{c}" for n in names for c in CSV_COLUMNS]
    rows = sorted(result["images"], key=lambda r: (r["models"][0] or {}).get("score") or 0.0)
    buf = io.StringIO()
    import csv

    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        values = [row["id"]]
        for rec in row["models"]:
            values += ["" if rec is None or rec[c] is None else rec[c] for c in CSV_COLUMNS]
        writer.writerow(values)
    return buf.getvalue()


def diff_png(job: Job, index: int, model: int) -> bytes:
    """The difference view of image ``index`` for model ``model`` of a finished evaluation job."""
    from nucleiseg.io.images import read_image, read_labels
    from nucleiseg.io.labels import load_item_gt
    from nucleiseg.io.outputs import difference_overlay

    items, work = job.private.get("items"), job.private.get("work")
    if job.state != "finished" or items is None or work is None or not work.is_dir():
        raise api_error(409, f"job '{job.id}' has no finished evaluation to show")
    if not 0 <= index < len(items) or not 0 <= model < len(job.params.get("models", [])):
        raise api_error(404, f"no image {index} / model {model} in job '{job.id}'")
    item = items[index]
    image = read_image(item.image_path)
    pred = read_labels(work / f"m{model}" / output_name(item.id, "masks"))
    return png_bytes(difference_overlay(image, load_item_gt(item), pred, legend=False))  # the page has a legend


def thumb_png(job: Job, index: int) -> bytes:
    """The thumbnail of image ``index`` of an evaluation job."""
    work = job.private.get("work")
    path = None if work is None else work / "thumbs" / f"{int(index)}.png"
    if path is None or not path.is_file():
        raise api_error(404, f"no thumbnail {index} in job '{job.id}'")
    return path.read_bytes()
