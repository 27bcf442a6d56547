"""Scale out on Dask: whole folders across a cluster, and images larger than memory.

Needs the ``distributed`` extra (``dask[array]``, ``distributed``, ``zarr``). Names are imported
on first use, so ``import nucleiseg.distributed`` stays cheap.

* :func:`get_client` / :func:`dask_client` -- ``"local"``, ``"local:N"`` or ``"tcp://host:8786"``.
* :class:`DaskExecutor`, :class:`BlockExecutor` -- the Dask executors of the one batch driver,
  :func:`nucleiseg.inference.batch.segment_items` (``executor="dask"``, ``block=PX``).
* :func:`segment_items_dask` -- one task per image, same outputs and ``run.json`` as the serial batch.
* :func:`pending_items` -- what ``--resume`` still has to do (serial or Dask).
* :func:`segment_dask` -- one huge image, block-wise, seam-free globally unique labels.
* :func:`write_labels_zarr` -- write such labels block by block.
* :func:`segment_items_blockwise` -- the CLI's block-wise batch (``OUT/<id>_masks.zarr``).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "get_client": "cluster",
    "dask_client": "cluster",
    "parse_spec": "cluster",
    "describe_client": "cluster",
    "segment_items_dask": "folders",
    "segment_items_blockwise": "folders",
    "pending_items": "resume",
    "expected_outputs": "resume",
    "segment_dask": "blocks",
    "plan_blocks": "blocks",
    "segment_blocks": "blocks",
    "BlockPlan": "blocks",
    "open_array": "arrays",
    "write_labels_zarr": "arrays",
    "cached_segmenter": "workers",
    "as_spec": "workers",
    "DaskExecutor": "executor",
    "BlockExecutor": "executor",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'nucleiseg.distributed' has no attribute {name!r}")
    try:
        module = importlib.import_module(f"nucleiseg.distributed.{_EXPORTS[name]}")
    except ModuleNotFoundError as exc:  # the optional extra is missing
        raise ModuleNotFoundError(
            f"nucleiseg.distributed needs the 'distributed' extra (dask, distributed, zarr): {exc}"
        ) from exc
    return getattr(module, name)
