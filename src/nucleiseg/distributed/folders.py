"""Older entry points of the Dask batches; both call the one driver, :func:`nucleiseg.inference.batch.segment_items`.

* :func:`segment_items_dask` -- one task per image (:class:`~nucleiseg.distributed.executor.DaskExecutor`).
* :func:`segment_items_blockwise` -- each image block-wise into ``OUT/<id>_masks.zarr``
  (:class:`~nucleiseg.distributed.executor.BlockExecutor`).
"""

from __future__ import annotations

from pathlib import Path

from distributed import Client, default_client

from nucleiseg.bundle import ModelSpec
from nucleiseg.config import InferConfig, PostprocessConfig
from nucleiseg.distributed.workers import as_spec
from nucleiseg.inference.batch import segment_items
from nucleiseg.inference.record import RunRecord
from nucleiseg.io.labels import InputItem
from nucleiseg.io.layout import OutputOptions

__all__ = ["segment_items_dask", "segment_items_blockwise"]


def segment_items_dask(
    items: list[InputItem],
    out_dir: str | Path,
    model: ModelSpec | str | Path = "default",
    options: OutputOptions | None = None,
    infer: InferConfig | None = None,
    post: PostprocessConfig | None = None,
    client: Client | None = None,
    resume: bool = False,
    progress: bool = True,
    device: str = "cpu",
) -> RunRecord:
    """Segment every item on a Dask cluster: :func:`segment_items` with ``executor="dask"``.

    ``model`` is a :class:`ModelSpec`, or a name or folder loaded with the ``"auto"`` backend
    (as ``nucleiseg segment`` does) on ``device``; ``client`` defaults to the current default client.
    """
    client = client if client is not None else default_client()
    return segment_items(
        items, out_dir, as_spec(model, device), options, infer, post,
        executor="dask", client=client, resume=resume, progress=progress,
    )


def segment_items_blockwise(
    items: list[InputItem],
    out_dir: str | Path,
    model: ModelSpec | str | Path = "default",
    infer: InferConfig | None = None,
    post: PostprocessConfig | None = None,
    client: Client | None = None,
    block: int = 2048,
    overlap: int | None = None,
    resume: bool = False,
    progress: bool = True,
    device: str = "cpu",
) -> RunRecord:
    """Segment each item block-wise into ``OUT/<id>_masks.zarr``: :func:`segment_items` with ``block``.

    ``client`` defaults to the current default client, else Dask's local scheduler.
    """
    return segment_items(
        items, out_dir, as_spec(model, device), None, infer, post,
        executor="dask" if client is not None else "serial", client=client,
        block=block, block_overlap=overlap, resume=resume, progress=progress,
    )
