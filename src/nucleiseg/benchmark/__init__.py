"""Speed benchmark of ``nucleiseg segment`` against the naive baseline (``nucleiseg benchmark``): see :mod:`nucleiseg.benchmark.core`.

The accuracy suite (:mod:`nucleiseg.benchmark.accuracy`) lives here too.
"""

from __future__ import annotations

from nucleiseg.benchmark.core import format_table, run_benchmark
from nucleiseg.benchmark.images import fit, prepare_images
from nucleiseg.benchmark.runners import PIPELINES, STAGES

__all__ = ["PIPELINES", "STAGES", "fit", "format_table", "prepare_images", "run_benchmark"]
