"""In-process runners of the benchmark: the per-image step users run, timed stage by stage.

A backend's runner is :func:`nucleiseg.inference.item.segment_one`, the step every
``nucleiseg segment`` executor maps over the images (read, :meth:`Segmenter.segment` with its
``normalize`` / ``estimate`` / ``predict`` / ``postprocess`` stages, write the label TIFF and the
measurements CSV), reading the stage times from its record. The baseline's runner is
:class:`nucleiseg.benchmark.baseline.BaselineStep`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from nucleiseg.inference.predictors import BACKENDS
from nucleiseg.io.labels import InputItem

__all__ = ["PIPELINES", "STAGES", "Runner", "make_runner"]

#: Stages timed for every image (``estimate`` is 0 for the baseline and at a given diameter).
STAGES = ("read", "normalize", "estimate", "predict", "postprocess", "write")
#: ``baseline`` and the segmenter's backends (``auto``: what ``nucleiseg segment`` runs by default).
PIPELINES = ("baseline", *BACKENDS)

Runner = Callable[[InputItem, Path], tuple[dict[str, float], np.ndarray]]


def make_runner(name: str, model: str | Path, threads: int | None = None) -> Runner:
    """``(item, out_dir) -> (seconds per stage, labels)`` for one pipeline.

    Raises
    ------
    FileNotFoundError
        When the model has no file for the backend (e.g. no ``model.fp16.onnx``).
    """
    if name == "baseline":
        from nucleiseg.benchmark.baseline import BaselineStep

        if threads is not None:
            import torch

            torch.set_num_threads(threads)
        base = BaselineStep(model)
        return lambda item, out: base(item.image_path, out, item.id)
    from nucleiseg.bundle import ModelSpec
    from nucleiseg.inference.item import segment_one
    from nucleiseg.inference.segmenter import Segmenter
    from nucleiseg.io.layout import OutputOptions

    seg = Segmenter.from_spec(ModelSpec.of(model, name, "cpu", threads))
    options = OutputOptions(measure=True)

    def run(item: InputItem, out: Path) -> tuple[dict[str, float], np.ndarray]:
        outcome = segment_one(item, seg, out, options, seg.config.infer, seg.config.postprocess, want_labels=True)
        if "failure" in outcome:
            raise RuntimeError(outcome["failure"]["error"])
        return dict(outcome["record"]["timings"]), outcome["labels"]

    return run
