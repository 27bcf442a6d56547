"""Training throughput (images/s) of every architecture on CPU: Adam steps on 8x3x256x256 crops.

Thin entry point for the ``train`` mode of ``model_speed.py``; writes
``benchmarks/results/train_throughput.json``.

Usage::

    python benchmarks/train_throughput.py [--repeats N] [--threads T] [--models a,b]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from model_speed import main  # noqa: E402

if __name__ == "__main__":
    main(default_mode="train")
