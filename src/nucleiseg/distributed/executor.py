"""Dask executors of the batch driver: one task per image, or one image at a time block-wise.

Both follow :class:`nucleiseg.inference.executors.Executor`: ``map(step, items)`` yields
``(index, outcome)`` and ``describe()`` gives ``run.json``'s ``executor`` entry; the driver
(:func:`nucleiseg.inference.batch.segment_items`) owns resume, the run-length CSV and
``run.json``.

* :class:`DaskExecutor` submits one task per image; each worker process loads the model of the
  picklable :class:`~nucleiseg.bundle.ModelSpec` once (:func:`cached_segmenter`: backend,
  device and threads included) and runs the same :class:`~nucleiseg.inference.item.ItemStep` as
  the serial batch. Workers read the inputs and write the outputs themselves, so on a
  multi-machine cluster both folders must be on a file system every worker sees.
* :class:`BlockExecutor` segments each image block-wise (images larger than memory): the image
  is read lazily, planned (:func:`plan_blocks`), segmented tile by tile on the cluster (or Dask's
  local scheduler) and written to ``OUT/<id>_masks.zarr`` block by block.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any

from distributed import Client, as_completed, default_client

from nucleiseg.bundle import ModelSpec
from nucleiseg.distributed.arrays import open_array, write_labels_zarr
from nucleiseg.distributed.blocks import plan_blocks, segment_blocks
from nucleiseg.distributed.cluster import describe_client
from nucleiseg.distributed.workers import cached_segmenter
from nucleiseg.inference.item import ItemStep, Outcome
from nucleiseg.inference.record import failure_record
from nucleiseg.io.labels import InputItem
from nucleiseg.io.layout import OutputLayout

__all__ = ["BlockExecutor", "DaskExecutor"]


def _task(step: ItemStep, item: InputItem, spec: ModelSpec) -> Outcome:
    """Runs on a worker: segment one image and write its outputs; never raises for a bad file."""
    try:
        segmenter = cached_segmenter(spec)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:
        return {"failure": failure_record(item, exc)}
    return step(item, segmenter)


class DaskExecutor:
    """One Dask task per image on ``client`` (default: the current default client).

    A task whose worker dies is retried once elsewhere, then recorded as a failure.
    """

    def __init__(self, spec: ModelSpec, client: Client | None = None) -> None:
        self.spec = spec
        self.client = client if client is not None else default_client()

    def map(self, step: ItemStep, items: Sequence[InputItem]) -> Iterator[tuple[int, Outcome]]:
        """Yield ``(index, outcome)`` as tasks complete, on any worker."""
        futures = {
            self.client.submit(_task, step, item, self.spec, pure=False, retries=1): index
            for index, item in enumerate(items)
        }
        try:
            for future in as_completed(futures):
                index = futures[future]
                try:
                    outcome = future.result()
                except Exception as exc:  # the task itself failed twice: its worker died
                    outcome = {"failure": failure_record(items[index], RuntimeError(f"worker failed: {exc}"))}
                yield index, outcome
        except BaseException:  # interrupted: stop the tasks still queued; finished outputs are complete
            self.client.cancel(list(futures))
            raise

    def describe(self) -> dict[str, Any]:
        """``{"kind": "dask", "scheduler": ..., "workers": N, "threads": T}``."""
        return {"kind": "dask", **describe_client(self.client)}


class BlockExecutor:
    """Segment each image block-wise into ``OUT/<id>_masks.zarr``, one image after the other.

    Parameters
    ----------
    spec : ModelSpec
        The model the workers load.
    client : distributed.Client, optional
        Cluster for the blocks (None: Dask's local scheduler).
    block : int
        Block side in pixels.
    overlap : int, optional
        Margin segmented around each block (default: ``max(64, 4 x nucleus diameter)``).
    progress : bool
        A progress bar over the blocks of each image.
    """

    def __init__(
        self, spec: ModelSpec, client: Client | None = None, block: int = 2048, overlap: int | None = None,
        progress: bool = False,
    ) -> None:
        self.spec, self.client, self.block, self.overlap, self.progress = spec, client, block, overlap, progress

    def map(self, step: ItemStep, items: Sequence[InputItem]) -> Iterator[tuple[int, Outcome]]:
        """Yield ``(index, outcome)`` in input order; a file that fails is one failure record."""
        layout = OutputLayout(step.out_dir, step.options, blockwise=True)
        for index, item in enumerate(items):
            yield index, self._one(step, layout, item)

    def _one(self, step: ItemStep, layout: OutputLayout, item: InputItem) -> Outcome:
        t = time.perf_counter()
        try:
            image = open_array(item.image_path, self.block)
            plan = plan_blocks(image, self.spec, self.block, self.overlap, step.infer, step.post, self.client, self.spec.device)
            labels = segment_blocks(image, plan, self.spec.device)
            count = write_labels_zarr(labels, layout.masks_path(item.id), self.client, self.progress)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:
            return {"failure": failure_record(item, exc)}
        record = {
            "id": item.id, "file": str(item.image_path), "count": count,
            "diameter": None if plan.diameter is None else round(float(plan.diameter), 2),
            "shape": list(image.shape), "blocks": plan.describe(),
            "seconds": round(time.perf_counter() - t, 4), "outputs": layout.expected(item.id),
        }
        return {"record": record, "labels": None}

    def describe(self) -> dict[str, Any]:
        """``{"kind": "blocks", "block": ..., "overlap": ..., "dask": cluster or None}``."""
        cluster = describe_client(self.client) if self.client is not None else None
        return {"kind": "blocks", "block": self.block, "overlap": self.overlap, "dask": cluster}
