"""Whole-pipeline CPU benchmark (``nucleiseg benchmark``): see :mod:`nucleiseg.benchmark.core`.

Modules: ``core`` (the measurement and the table), ``runners`` (one pipeline, stage by stage),
``pool`` (throughput of worker processes), ``images`` (inputs), ``memory`` (peak RSS).
"""

from __future__ import annotations

from nucleiseg.benchmark.core import BACKENDS, format_table, run_benchmark
from nucleiseg.benchmark.images import fit, prepare_images
from nucleiseg.benchmark.runners import PIPELINES, STAGES

__all__ = ["BACKENDS", "PIPELINES", "STAGES", "fit", "format_table", "prepare_images", "run_benchmark"]
