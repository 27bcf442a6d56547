"""Older entry point of the process pool; the pool itself is :class:`~nucleiseg.inference.executors.ProcessExecutor`."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from nucleiseg.config import InferConfig, PostprocessConfig
from nucleiseg.inference.executors import ProcessExecutor, available_cpus
from nucleiseg.inference.item import ItemStep, spec_of
from nucleiseg.inference.segmenter import Segmenter
from nucleiseg.io.labels import InputItem
from nucleiseg.io.layout import OutputOptions

__all__ = ["available_cpus", "iter_outcomes"]


def iter_outcomes(
    items: list[InputItem],
    segmenter: Segmenter,
    out_dir: Path,
    options: OutputOptions,
    infer: InferConfig,
    post: PostprocessConfig,
    workers: int,
    want_labels: bool = False,
    threads: int | None = None,
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(index into items, segment_one outcome)`` as ``workers`` processes finish images.

    Raises
    ------
    ValueError
        When ``segmenter`` does not say what it was loaded from (workers reload it).
    """
    spec = spec_of(segmenter)
    if spec is None:
        raise ValueError("worker processes need a model loaded by name or folder (workers reload it)")
    if threads:
        spec = replace(spec, threads=threads)
    step = ItemStep(Path(out_dir), options, infer, post, want_labels)
    yield from ProcessExecutor(spec, workers).map(step, items)
