"""Segment many files into an output folder: the one batch driver behind every entry point.

:func:`segment_items` owns everything a batch does around the images: which items still need
work (``resume``, by :class:`~nucleiseg.io.layout.OutputLayout`), the progress bar, one-line
errors (one bad file never stops the batch), the run-length CSV and ``run.json``
(:class:`~nucleiseg.inference.record.RunRecord`). *Where* the per-image step
(:class:`~nucleiseg.inference.item.ItemStep`) runs is the executor's business:

* ``"serial"`` -- in this process (:class:`~nucleiseg.inference.executors.SerialExecutor`);
* ``"processes"`` -- a pool of spawned worker processes, each loading the model of the
  :class:`~nucleiseg.bundle.ModelSpec` once (:class:`~nucleiseg.inference.executors.ProcessExecutor`);
* ``"dask"`` -- one task per image on a Dask cluster (:class:`nucleiseg.distributed.executor.DaskExecutor`);
* ``block=PX`` -- each image block-wise into ``<id>_masks.zarr`` (images larger than memory,
  :class:`nucleiseg.distributed.executor.BlockExecutor`), on the cluster when one is given.

Every executor runs the same step, so the outputs and records do not depend on the executor.
The default executor is ``"dask"`` with a ``client``, ``"processes"`` with ``workers > 1``, else
``"serial"``. ``"threads"`` segments ``workers`` images at a time in this process with the one
model (load it with ``threads=1``); worker processes share the cores out between them unless
``spec.threads`` says otherwise.

Resuming (``resume``) skips items whose outputs all exist (:meth:`OutputLayout.pending`): their
records come from the earlier ``run.json`` (rebuilt from the files where it is unreadable) and
their masks are read back for the CSV. Temporary files of an interrupted run are removed, and
outputs that are not intact (size and header, :func:`~nucleiseg.io.layout.intact`) are made
again.

When the output folder cannot take more files (full, read-only, no permission, over quota) the
batch stops at the first such error with :class:`OutputError`: finished outputs are complete,
the failed image left nothing, and ``run.json`` was written if it could be (with ``stopped``).
The error's ``record`` holds what was done.
"""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from nucleiseg.bundle import ModelSpec
from nucleiseg.config import InferConfig, PostprocessConfig
from nucleiseg.inference.executors import Executor, ProcessExecutor, SerialExecutor, ThreadExecutor
from nucleiseg.inference.item import ItemStep, load_segmenter, segment_one, spec_of, write_outputs
from nucleiseg.inference.record import RunRecord, failure_record, read_records, versions
from nucleiseg.inference.segmenter import Segmenter
from nucleiseg.io.atomic import OutputError, output_fault, remove_stale_temps
from nucleiseg.io.images import read_labels
from nucleiseg.io.labels import InputItem
from nucleiseg.io.layout import OutputLayout, OutputOptions
from nucleiseg.io.rle import write_rle_csv

__all__ = [
    "EXECUTORS", "BatchSummary", "OutputError", "OutputOptions", "RunRecord", "failure_record", "segment_items", "segment_one",
    "versions", "write_outputs",
]

#: Executor names :func:`segment_items` accepts.
EXECUTORS = ("serial", "threads", "processes", "dask")
#: What :func:`segment_items` returns (the content of ``run.json``); the older name.
BatchSummary = RunRecord


def _pick_executor(executor: str | None, workers: int, client: Any, block: int | None) -> str:
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    kind = executor or ("dask" if client is not None else "processes" if workers > 1 else "serial")
    if kind not in EXECUTORS:
        raise ValueError(f"unknown executor {kind!r} (choose {', '.join(EXECUTORS)})")
    if block is not None and kind in ("processes", "threads"):
        raise ValueError("block-wise segmentation runs on Dask (or its local scheduler), not on worker processes")
    return kind


def _make_executor(
    kind: str, spec: ModelSpec | None, segmenter: Segmenter, workers: int, client: Any,
    block: int | None, block_overlap: int | None, progress: bool,
) -> Executor:
    if kind == "serial" and block is None:
        return SerialExecutor(segmenter)
    if kind == "threads" and block is None:
        return ThreadExecutor(segmenter, workers)
    if spec is None:
        raise ValueError(f"the {kind} executor needs a model loaded by name or folder (its workers load it again)")
    if kind == "processes":
        return ProcessExecutor(spec, workers)
    from nucleiseg.distributed.executor import BlockExecutor, DaskExecutor

    if block is not None:
        if client is None:
            from distributed import default_client

            try:
                client = default_client()
            except ValueError:  # no cluster: Dask's local scheduler
                client = None
        return BlockExecutor(spec, client, block, block_overlap, progress)
    return DaskExecutor(spec, client)


def _absolute(item: InputItem) -> InputItem:
    """The item with absolute paths, so workers whose working folder differs still find it."""
    gt = None if item.gt_path is None else Path(item.gt_path).absolute()
    return replace(item, image_path=Path(item.image_path).absolute(), gt_path=gt)


def _count(path: Path) -> int | None:
    try:
        labels = read_labels(path)
    except Exception:  # noqa: BLE001 - unreadable after all: the record says so
        return None
    return int(np.unique(labels[labels > 0]).size)


def _resumed_record(item: InputItem, layout: OutputLayout, earlier: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The record of an item done by an earlier run: from its ``run.json``, else rebuilt from the files."""
    if item.id in earlier:
        return earlier[item.id]
    count = None if layout.blockwise else _count(layout.masks_path(item.id))
    outputs = [n for n in layout.expected(item.id) if (layout.out_dir / n).exists()]
    outputs = outputs or layout.expected(item.id, stack=True)
    return {"id": item.id, "file": str(item.image_path), "count": count, "outputs": outputs, "recovered": True}


def _prepare(out: Path, layout: OutputLayout, items: list[InputItem], resume: bool, verify: bool, progress: bool) -> list[InputItem]:
    """Create the output folder and pick the items to segment (with ``resume``: clean up first).

    Raises :class:`OutputError` when the folder cannot be created or cleaned.
    """
    try:
        out.mkdir(parents=True, exist_ok=True)
        stale = remove_stale_temps(out) if resume else []
    except OSError as exc:
        fault = output_fault(exc, out)
        if fault is None:
            raise
        raise fault from exc
    todo = layout.pending(items, full=verify) if resume else list(items)
    if progress and stale:
        tqdm.write(f"resume: removed {len(stale)} temporary file(s) of an interrupted run", file=sys.stderr)
    if progress and len(todo) < len(items):
        tqdm.write(f"resume: {len(items) - len(todo)} of {len(items)} images already done", file=sys.stderr)
    return todo


def _run(runner: Executor, step: ItemStep, todo: list[InputItem], progress: bool) -> tuple[dict[str, dict[str, Any]], dict[str, str] | None]:
    """Map the step over ``todo``: the outcomes by id, and the first output-folder error (the batch stopped there).

    After that error nothing new starts; images already in progress finish (their outcomes are
    kept) where the executor can say so (``cancel``), else they are dropped unrecorded.
    """
    outcomes: dict[str, dict[str, Any]] = {}
    fatal = None
    mapped = runner.map(step, todo)
    try:
        with tqdm(total=len(todo), desc="segment", unit="img", disable=not progress) as bar:
            for index, outcome in mapped:
                if "fatal" in outcome:
                    if fatal is None:
                        fatal = outcome["fatal"]
                    if not hasattr(runner, "cancel"):
                        break
                    runner.cancel()
                    continue
                outcomes[todo[index].id] = outcome
                if "failure" in outcome and fatal is None:
                    tqdm.write(f"error: {outcome['failure']['error']}", file=sys.stderr)
                bar.update()
    finally:
        mapped.close()  # type: ignore[attr-defined]
    return outcomes, fatal


def _collect(record: RunRecord, items: list[InputItem], outcomes: dict[str, dict[str, Any]], layout: OutputLayout,
             pending: set[str], want_labels: bool) -> dict[str, np.ndarray]:
    """Fill ``record`` in input order (resumed items included); the labels for the run-length CSV."""
    earlier = read_records(layout.record_path) if len(pending) < len(items) else {}
    labels: dict[str, np.ndarray] = {}
    for item in items:
        if item.id not in pending:
            record.images.append(_resumed_record(item, layout, earlier))
            record.skipped.append(item.id)
            if want_labels:
                labels[item.id] = read_labels(layout.masks_path(item.id))
            continue
        outcome = outcomes.get(item.id)
        if outcome is None:  # never started: the batch stopped first
            continue
        if "failure" in outcome:
            record.failures.append(outcome["failure"])
            continue
        record.images.append(outcome["record"])
        if want_labels and outcome.get("labels") is not None:
            labels[item.id] = outcome["labels"]
    return labels


def _finish(record: RunRecord, layout: OutputLayout, labels: dict[str, np.ndarray], options: OutputOptions,
            fatal: dict[str, str] | None) -> None:
    """Write the run-length CSV and ``run.json``; after an output-folder error, ``run.json`` if it can, then raise it."""
    if fatal is not None:
        record.stopped = fatal["error"]
        with contextlib.suppress(OSError):
            record.write(layout.record_path)
        error = OutputError(fatal["error"], layout.out_dir)
        error.record = record
        raise error
    try:
        if options.rle:
            write_rle_csv(options.rle, labels, include_shape=True)
        record.write(layout.record_path)
    except OSError as exc:
        fault = output_fault(exc, layout.out_dir) or (output_fault(exc, Path(options.rle).absolute().parent) if options.rle else None)
        if fault is None:
            raise
        fault.record = record
        raise fault from exc


def _check_block_outputs(block: int | None, options: OutputOptions) -> None:
    """Refuse extra outputs with block-wise segmentation (it writes only ``<id>_masks.zarr``)."""
    if block is not None and (options.png or options.overlay or options.measure or options.rois or options.rle or options.geojson):
        raise ValueError("block-wise segmentation writes only <id>_masks.zarr; drop --png/--overlay/--measure/--rois/--rle/--geojson")


def _resolve_model(model: ModelSpec | Segmenter | str | Path, segmenter: Segmenter | None) -> tuple[ModelSpec | None, Segmenter]:
    """The spec workers load (None for a hand-built segmenter) and the segmenter of this process."""
    if isinstance(model, Segmenter):
        return spec_of(model), segmenter or model
    spec = model if isinstance(model, ModelSpec) else ModelSpec.of(model)
    return spec, segmenter or load_segmenter(spec)


def _execute(runner: Executor, step: ItemStep, segmenter: Segmenter, items: list[InputItem], todo: list[InputItem],
             layout: OutputLayout, progress: bool) -> RunRecord:
    """Run ``step`` over ``todo``, then record every item and write the run-length CSV and ``run.json``."""
    start = time.perf_counter()
    outcomes, fatal = _run(runner, step, todo, progress)
    record = RunRecord(segmenter.describe(step.infer, step.post), runner.describe())
    labels = _collect(record, items, outcomes, layout, {item.id for item in todo}, bool(step.options.rle) and fatal is None)
    record.seconds = time.perf_counter() - start
    _finish(record, layout, labels, step.options, fatal)
    return record


def segment_items(
    items: list[InputItem], out_dir: str | Path, model: ModelSpec | Segmenter | str | Path = "default",
    options: OutputOptions | None = None, infer: InferConfig | None = None, post: PostprocessConfig | None = None, *,
    executor: str | None = None, workers: int = 1, resume: bool = False, verify: bool = False, progress: bool = True,
    segmenter: Segmenter | None = None, client: Any = None, block: int | None = None, block_overlap: int | None = None,
) -> RunRecord:
    """Segment every item into ``out_dir``, write the run-length CSV and ``run.json``.

    Parameters
    ----------
    items, out_dir : list of InputItem, path
        From :func:`nucleiseg.io.labels.discover_inputs`; the output folder (created; with
        Dask it must be visible to every worker).
    model : ModelSpec, Segmenter, str or Path
        A spec (what worker processes load), a loaded segmenter (its spec is
        :attr:`Segmenter.source`), or a name or folder (default backend).
    options : OutputOptions
        Extra outputs; ``options.rle`` is written at the end, for all items (resumed included).
    infer, post : optional
        Override the model's inference and post-processing settings.
    executor, workers : str, int
        Where images are segmented, ``workers`` at a time (see the module notes).
    resume, verify : bool
        Skip items whose outputs are all there and intact; ``verify`` decodes every label
        image it would skip (slower). See the module notes.
    progress : bool
        Progress bar and a note of resumed images on stderr.
    segmenter, client : optional
        The model already loaded from ``model`` (else loaded here); the Dask cluster.
    block, block_overlap : int, optional
        Segment each image block-wise in ``block x block`` tiles with this margin, into
        ``<id>_masks.zarr`` only.

    Returns
    -------
    RunRecord
        Records in input order; ``failures`` one per file that could not be segmented (the
        batch goes on); ``skipped`` the resumed ids.

    Raises
    ------
    ValueError
        Unknown executor, ``workers < 1``, extra outputs with ``block``, or a hand-built
        segmenter with a parallel executor.
    OutputError
        The output folder cannot take more files (see the module notes).
    """
    kind = _pick_executor(executor, workers, client, block)
    options = options or OutputOptions()
    _check_block_outputs(block, options)
    spec, segmenter = _resolve_model(model, segmenter)
    out = Path(out_dir).absolute()
    layout = OutputLayout(out, options, blockwise=block is not None)
    items = [_absolute(item) for item in items]
    todo = _prepare(out, layout, items, resume, verify, progress)
    runner = _make_executor(kind, spec, segmenter, workers, client, block, block_overlap, progress)
    step = ItemStep(out, options, infer or segmenter.config.infer, post or segmenter.config.postprocess,
                    want_labels=bool(options.rle), plane_progress=progress and kind == "serial" and block is None)
    return _execute(runner, step, segmenter, items, todo, layout, progress)
