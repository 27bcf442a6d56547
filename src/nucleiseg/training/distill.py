"""Knowledge distillation: a teacher model's probabilities as soft training targets.

A bigger or ensembled model (the bundled ``accurate`` ensemble, say) is more accurate than the
small network the CPU runs by default, but too slow to be the default. Distillation trains the
small network towards the teacher's probabilities as well as towards the ground truth
(``TrainConfig.teacher``, ``LossConfig.distill``): the teacher's maps carry its smoother,
better-calibrated boundaries and contours, at no cost at inference.

The teacher sees each clean training image once, at native scale (:meth:`Segmenter.probabilities`,
its own backend and tiling, no TTA), when training starts; the crops then transform its maps
exactly as they transform the labels (:class:`~nucleiseg.training.data.CropDataset`), while
the intensity augmentations reach only the student's input.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from typing import Any

import numpy as np
from tqdm import tqdm

from nucleiseg.config import NormalizeConfig
from nucleiseg.training.data import TrainingSample

__all__ = ["add_teacher_probabilities"]


def add_teacher_probabilities(
    samples: list[TrainingSample], teacher: str, normalize: NormalizeConfig, out_channels: int, progress: bool = True,
) -> dict[str, Any]:
    """Set ``sample.teacher`` to the teacher's ``(K, H, W)`` float16 probabilities of each image.

    Parameters
    ----------
    samples : list of TrainingSample
        Normalised training images (changed in place).
    teacher : str
        Bundled model name or model folder (``Segmenter.from_pretrained``; fastest backend).
    normalize : NormalizeConfig
        The student's normalisation: the teacher must use the same, since it sees the images
        as the student's recipe normalised them.
    out_channels : int
        The student's output channels; the teacher must give as many.
    progress : bool
        Show a progress bar.

    Returns
    -------
    dict
        What the run report records: the teacher, its backend and model hash.

    Raises
    ------
    ValueError
        When the teacher normalises differently or predicts another number of channels.
    """
    from nucleiseg.inference.segmenter import Segmenter  # the inference stack, only when distilling

    seg = Segmenter.from_pretrained(teacher)
    if seg.is_classical:
        raise ValueError(f"teacher {teacher!r}: the classical model has no probabilities")
    if asdict(seg.config.normalize) != asdict(normalize):
        raise ValueError(f"teacher {teacher!r} normalises images as {asdict(seg.config.normalize)}, "
                         f"this recipe as {asdict(normalize)}")
    infer = replace(seg.config.infer, tta=False, scales=[1.0])
    for sample in tqdm(samples, desc=f"teacher {teacher}", disable=not progress, leave=False):
        probs = seg.probabilities(sample.image.astype(np.float32), infer)
        if probs.shape[0] != out_channels:
            raise ValueError(f"teacher {teacher!r} predicts {probs.shape[0]} channels, the student {out_channels}")
        sample.teacher = probs.astype(np.float16)
    return {"source": teacher, "name": seg.name, "backend": seg.backend, "model_hash": seg.model_hash, "images": len(samples)}
