"""Segment a folder of images across a Dask cluster, one task per image.

The outputs, ``run.json`` and failure records are those of the serial
:func:`nucleiseg.inference.batch.segment_items` (the same :func:`write_outputs` writes every
file): only the scheduling differs. Each worker process loads the model once and keeps it
(:func:`cached_segmenter`); tasks carry the model's name or path, never the model itself.
Workers read the inputs and write the outputs themselves, so on a multi-machine cluster both
folders must be on a file system every worker sees.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from distributed import Client, as_completed, default_client
from tqdm import tqdm

from nucleiseg.config import InferConfig, PostprocessConfig
from nucleiseg.inference.batch import BatchSummary, OutputOptions, versions, write_outputs
from nucleiseg.inference.segmenter import CLASSICAL, Segmenter, resolve_model_dir
from nucleiseg.io.atomic import atomic_write_text
from nucleiseg.io.images import read_image, read_labels
from nucleiseg.io.labels import InputItem
from nucleiseg.io.rle import write_rle_csv

__all__ = ["cached_segmenter", "model_reference", "expected_outputs", "pending_items", "segment_items_dask"]

_CACHE: dict[tuple[str, str, float], Segmenter] = {}
_CACHE_LOCK = threading.Lock()


def model_reference(model: str | Path) -> str:
    """What tasks carry instead of the model: ``"classical"``, a bundled name or an absolute folder.

    A relative run folder is made absolute so workers started elsewhere still find it.
    """
    text = str(model)
    if text == CLASSICAL:
        return text
    path = Path(text)
    if (path / "config.json").is_file():
        return str(path.resolve())
    return text


def cached_segmenter(model: str, device: str = "cpu") -> Segmenter:
    """The :class:`Segmenter` for ``model``, loaded once per process and reused by later tasks.

    The cache key includes the weights file's modification time, so a long-lived worker picks
    up a model folder that was retrained in place.
    """
    stamp = 0.0
    if model != CLASSICAL:
        weights = resolve_model_dir(model) / "weights.safetensors"
        stamp = weights.stat().st_mtime if weights.is_file() else 0.0
    key = (model, device, stamp)
    with _CACHE_LOCK:
        if key not in _CACHE:
            for old in [k for k in _CACHE if k[:2] == key[:2]]:
                del _CACHE[old]
            _CACHE[key] = Segmenter.from_pretrained(model, device=device)
        return _CACHE[key]


def expected_outputs(item: InputItem, options: OutputOptions) -> list[str]:
    """File names :func:`write_outputs` always writes for ``item`` with ``options``.

    ``<id>_diff.png`` is left out: it is only written when ground truth of the same shape exists.
    """
    names = [f"{item.id}_masks.tif"]
    if options.png:
        names.append(f"{item.id}_masks.png")
    if options.overlay:
        names.append(f"{item.id}_overlay.png")
    if options.measure:
        names.append(f"{item.id}_measurements.csv")
    if options.rois:
        names.append(f"{item.id}_rois.zip")
    return names


def pending_items(items: list[InputItem], out_dir: str | Path, options: OutputOptions | None = None) -> list[InputItem]:
    """The items whose requested outputs are not all in ``out_dir`` yet (for ``--resume``).

    Outputs are written atomically, so a file that exists is complete: an image counts as done
    when every file of :func:`expected_outputs` exists. Works for the serial and the Dask path.
    """
    out = Path(out_dir)
    options = options or OutputOptions()
    return [item for item in items if not all((out / name).is_file() for name in expected_outputs(item, options))]


def _failure(item: InputItem, exc: BaseException) -> dict[str, str]:
    """One-line failure record naming the file, worded as the serial batch words it."""
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if str(item.image_path) not in message:
        message = f"{item.image_path}: {message}"
    return {"id": item.id, "file": str(item.image_path), "error": message}


def _segment_task(
    item: InputItem, out_dir: str, model: str, device: str, options: OutputOptions,
    infer: InferConfig, post: PostprocessConfig, want_labels: bool,
) -> dict[str, Any]:
    """Runs on a worker: segment one image and write its outputs; never raises for a bad file."""
    t = time.perf_counter()
    try:
        segmenter = cached_segmenter(model, device)
        image = read_image(item.image_path)
        result = segmenter.segment(image, infer, post, keep_probabilities=False)
        files = write_outputs(item, image, result, Path(out_dir), options)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:  # one bad image never stops the batch
        return {"failure": _failure(item, exc)}
    record = {
        "id": item.id,
        "file": str(item.image_path),
        "count": result.count,
        "diameter": None if result.diameter is None else round(float(result.diameter), 2),
        "scale": round(float(result.scale), 4),
        "seconds": round(time.perf_counter() - t, 4),
        "outputs": files,
    }
    return {"record": record, "labels": result.labels if want_labels else None}


def _absolute(item: InputItem) -> InputItem:
    """The item with absolute paths, so workers whose working folder differs still find it."""
    gt = None if item.gt_path is None else Path(item.gt_path).absolute()
    return replace(item, image_path=Path(item.image_path).absolute(), gt_path=gt)


def segment_items_dask(
    items: list[InputItem],
    out_dir: str | Path,
    model: str | Path = "default",
    options: OutputOptions | None = None,
    infer: InferConfig | None = None,
    post: PostprocessConfig | None = None,
    client: Client | None = None,
    resume: bool = False,
    progress: bool = True,
    device: str = "cpu",
) -> BatchSummary:
    """Segment every item on a Dask cluster into ``out_dir`` and write ``run.json``.

    Parameters
    ----------
    items : list of InputItem
        From :func:`nucleiseg.io.labels.discover_inputs`; paths are made absolute.
    out_dir : path
        Output folder (created); must be visible to every worker.
    model : str or Path
        ``"classical"``, a bundled model name or a run folder, loaded once per worker.
    options : OutputOptions
        Extra outputs, as for the serial batch (the run-length CSV is written here at the end).
    infer, post : optional
        Override the model's inference and post-processing settings.
    client : distributed.Client, optional
        Default: the current default client (see :func:`nucleiseg.distributed.get_client`).
    resume : bool
        Skip items whose outputs all exist already (:func:`pending_items`); they are listed
        under ``"skipped"`` in ``run.json``.
    progress : bool
        Progress bar that advances as tasks complete, on any worker.
    device : str
        Torch device on the workers.

    Returns
    -------
    BatchSummary
        Records in input order; ``failures`` holds one record per file that could not be
        segmented (the batch goes on). A task whose worker dies is retried once elsewhere.
    """
    client = client or default_client()
    options = options or OutputOptions()
    reference = model_reference(model)
    segmenter = Segmenter.from_pretrained(reference, device=device)  # validates the model; config for run.json
    infer = infer or segmenter.config.infer
    post = post or segmenter.config.postprocess
    out = Path(out_dir).absolute()
    out.mkdir(parents=True, exist_ok=True)
    todo = pending_items(items, out, options) if resume else list(items)
    todo_ids = {item.id for item in todo}
    skipped = [item for item in items if item.id not in todo_ids]
    summary = BatchSummary()
    start = time.perf_counter()
    worker_options = replace(options, rle=None)
    order = {item.id: k for k, item in enumerate(items)}
    futures = {}
    for item in todo:
        future = client.submit(
            _segment_task, _absolute(item), str(out), reference, device, worker_options, infer, post,
            bool(options.rle), pure=False, retries=1,
        )
        futures[future] = item
    rle_labels: dict[str, np.ndarray] = {}
    bar = tqdm(total=len(futures), desc="segment", unit="img", disable=not progress)
    try:
        for future in as_completed(futures):
            item = futures[future]
            try:
                outcome = future.result()
            except Exception as exc:  # the task itself failed twice: its worker died
                outcome = {"failure": _failure(_absolute(item), RuntimeError(f"worker failed: {exc}"))}
            bar.update(1)
            if "failure" in outcome:
                summary.failures.append(outcome["failure"])
                tqdm.write(f"error: {outcome['failure']['error']}", file=sys.stderr)
                continue
            summary.images.append(outcome["record"])
            if outcome.get("labels") is not None:
                rle_labels[item.id] = outcome["labels"]
    except BaseException:  # interrupted: stop the tasks still queued; finished outputs are complete
        client.cancel(list(futures))
        raise
    finally:
        bar.close()
    summary.images.sort(key=lambda r: order[r["id"]])
    summary.failures.sort(key=lambda r: order[r["id"]])
    summary.seconds = time.perf_counter() - start
    if options.rle:
        for item in skipped:  # resumed images: their finished masks go into the CSV too
            rle_labels[item.id] = read_labels(out / f"{item.id}_masks.tif")
        write_rle_csv(options.rle, {i.id: rle_labels[i.id] for i in items if i.id in rle_labels})
    from nucleiseg.distributed.cluster import describe_client

    sidecar = {
        **segmenter.describe(infer, post),
        "versions": versions(),
        "images": summary.images,
        "failures": summary.failures,
        "summary": {"images": len(summary.images), "nuclei": summary.nuclei, "failed": len(summary.failures), "seconds": round(summary.seconds, 3)},
        "dask": describe_client(client),
        "skipped": [item.id for item in skipped],
    }
    atomic_write_text(out / "run.json", json.dumps(sidecar, indent=2))
    return summary
