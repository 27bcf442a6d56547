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
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from distributed import Client, as_completed, default_client
from tqdm import tqdm

from nucleiseg.config import InferConfig, PostprocessConfig
from nucleiseg.distributed.cluster import describe_client
from nucleiseg.distributed.resume import pending_items
from nucleiseg.distributed.workers import cached_segmenter, model_reference
from nucleiseg.inference.batch import BatchSummary, OutputOptions, failure_record, segment_one, versions
from nucleiseg.inference.segmenter import Segmenter
from nucleiseg.io.atomic import atomic_write_text
from nucleiseg.io.images import read_labels
from nucleiseg.io.labels import InputItem
from nucleiseg.io.rle import write_rle_csv

__all__ = ["segment_items_dask", "segment_items_blockwise"]

def _segment_task(
    item: InputItem, out_dir: str, model: str, device: str, options: OutputOptions,
    infer: InferConfig, post: PostprocessConfig, want_labels: bool,
) -> dict[str, Any]:
    """Runs on a worker: segment one image and write its outputs; never raises for a bad file."""
    try:
        segmenter = cached_segmenter(model, device)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:
        return {"failure": failure_record(item, exc)}
    return segment_one(item, segmenter, Path(out_dir), options, infer, post, want_labels)


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
    client = client if client is not None else default_client()
    options = options or OutputOptions()
    reference = model_reference(model)
    segmenter = cached_segmenter(reference, device)  # validates the model here; config for run.json
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
                outcome = {"failure": failure_record(_absolute(item), RuntimeError(f"worker failed: {exc}"))}
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
    _write_sidecar(out, segmenter, infer, post, summary, client, {"skipped": [item.id for item in skipped]})
    return summary


def _write_sidecar(
    out: Path, segmenter: Segmenter, infer: InferConfig | None, post: PostprocessConfig | None,
    summary: BatchSummary, client: Client | None, extra: dict[str, Any],
) -> None:
    """``run.json`` as the serial batch writes it, plus the cluster and the run's extra fields."""
    sidecar = {
        **segmenter.describe(infer, post),
        "versions": versions(),
        "images": summary.images,
        "failures": summary.failures,
        "summary": {
            "images": len(summary.images), "nuclei": summary.nuclei,
            "failed": len(summary.failures), "seconds": round(summary.seconds, 3),
        },
        "dask": describe_client(client) if client is not None else None,
        **extra,
    }
    atomic_write_text(out / "run.json", json.dumps(sidecar, indent=2))


def segment_items_blockwise(
    items: list[InputItem],
    out_dir: str | Path,
    model: str | Path = "default",
    infer: InferConfig | None = None,
    post: PostprocessConfig | None = None,
    client: Client | None = None,
    block: int = 2048,
    overlap: int | None = None,
    resume: bool = False,
    progress: bool = True,
    device: str = "cpu",
) -> BatchSummary:
    """Segment each item block-wise (images larger than memory) into ``OUT/<id>_masks.zarr``.

    Each image is read lazily (TIFF tiles, zarr chunks), segmented with
    :func:`nucleiseg.distributed.blocks.segment_dask` and written block by block with
    :func:`nucleiseg.distributed.arrays.write_labels_zarr`; ``run.json`` records the block
    settings (overlap, diameter, intensity range) per image. A file that fails is recorded as one
    line and the next one goes on. With ``resume``, images whose ``.zarr`` exists are skipped
    (the folder only appears once complete).
    """
    from nucleiseg.distributed.arrays import open_array, write_labels_zarr
    from nucleiseg.distributed.blocks import plan_blocks, segment_blocks

    client = client if client is not None else _default_client()
    reference = model_reference(model)
    segmenter = cached_segmenter(reference, device)
    out = Path(out_dir).absolute()
    out.mkdir(parents=True, exist_ok=True)
    summary = BatchSummary()
    skipped = []
    start = time.perf_counter()
    for item in items:
        name = f"{item.id}_masks.zarr"
        if resume and (out / name).is_dir():
            skipped.append(item.id)
            continue
        t = time.perf_counter()
        try:
            image = open_array(item.image_path, block)
            plan = plan_blocks(image, reference, block, overlap, infer, post, client, device)
            count = write_labels_zarr(segment_blocks(image, plan, device), out / name, client, progress)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:
            summary.failures.append(failure_record(item, exc))
            tqdm.write(f"error: {summary.failures[-1]['error']}", file=sys.stderr)
            continue
        summary.images.append({
            "id": item.id, "file": str(item.image_path), "count": count,
            "diameter": None if plan.diameter is None else round(float(plan.diameter), 2),
            "shape": list(image.shape), "blocks": plan.describe(),
            "seconds": round(time.perf_counter() - t, 4), "outputs": [name],
        })
    summary.seconds = time.perf_counter() - start
    _write_sidecar(out, segmenter, infer, post, summary, client, {"skipped": skipped})
    return summary


def _default_client() -> Client | None:
    """The current default distributed client, or None (Dask's local scheduler)."""
    try:
        return default_client()
    except ValueError:
        return None
