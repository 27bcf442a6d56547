"""Run-folder bookkeeping: the metrics CSV and loss/score curves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from nucleiseg.io.atomic import atomic_path, atomic_write_text


def write_metrics_csv(path: str | Path, history: list[dict[str, Any]]) -> None:
    """Write one row per epoch, atomically."""
    atomic_write_text(path, pd.DataFrame(history).to_csv(index=False))


def write_curves(path: str | Path, history: list[dict[str, Any]]) -> None:
    """Plot training loss and validation scores per epoch into a PNG, atomically."""
    if not history:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frame = pd.DataFrame(history)
    fig, (ax_loss, ax_score) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(frame["epoch"], frame["train_loss"], marker="o")
    ax_loss.set(title="training loss", xlabel="epoch", ylabel="loss")
    for column, label in [("val_score", "competition score"), ("val_ap50", "AP@0.5"), ("val_mean_iou_seed", "mean IoU (seed)")]:
        if column in frame:
            ax_score.plot(frame["epoch"], frame[column], marker="o", label=label)
    ax_score.set(title="validation", xlabel="epoch", ylim=(0, 1))
    ax_score.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
