"""Training engine: data split and crops, the loop, checkpoints, run folders and fine-tuning.

Lazy (PEP 562): ``nucleiseg.training.progress`` (read by the web app and napari) imports no
PyTorch; the names below import their submodule, and PyTorch with it, on first use.
"""

from nucleiseg._lazy import lazy_exports

_EXPORTS = {
    "file_hash": "checkpoint",
    "load_weights": "checkpoint",
    "save_weights": "checkpoint",
    "split_ids": "data",
    "train": "trainer",
    "fine_tune": "finetune",
    "FineTuneConfig": "finetune",
}

__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
