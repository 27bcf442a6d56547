"""Weight averaging over the end of a run (stochastic weight averaging, SWA).

A run's per-epoch validation score is noisy (30 images), so the epoch it calls "best" is partly
luck. Averaging the weights of many late epochs gives one model in the middle of the region they
explore, which usually generalises better than any single epoch (Izmailov et al., 2018). With
``TrainConfig.average_from`` set, the trainer adds the weights at the end of every epoch past that
fraction of the run to an equal-weight running mean (:class:`WeightAverage`, saved beside the
run's ``last.safetensors`` so ``--resume`` continues it). At the end, the batch-norm statistics of
the averaged weights are recomputed on training crops (:func:`finish_average`, PyTorch's
``update_bn``): averaged running statistics do not describe the averaged network.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch.optim.swa_utils import update_bn

from nucleiseg.io.atomic import atomic_path
from nucleiseg.training.checkpoint import weights_metadata

__all__ = ["WeightAverage", "finish_average"]


class WeightAverage:
    """Equal-weight running mean of a model's parameters.

    Parameters
    ----------
    model : torch.nn.Module
        The model whose parameters are averaged (its parameter names key the mean).
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self.mean = {k: torch.zeros_like(p, dtype=torch.float32, device="cpu") for k, p in model.named_parameters()}
        self.count = 0

    def update(self, model: torch.nn.Module) -> None:
        """Add the model's current parameters to the mean."""
        self.count += 1
        with torch.no_grad():
            for k, p in model.named_parameters():
                self.mean[k] += (p.detach().float().cpu() - self.mean[k]) / self.count

    def save(self, path: str | Path) -> None:
        """Write the mean and its count to a safetensors file (atomically)."""
        with atomic_path(path) as tmp:
            save_file({k: v.contiguous() for k, v in self.mean.items()}, str(tmp), metadata={"count": str(self.count)})

    def load(self, path: str | Path) -> WeightAverage:
        """Read a mean written by :meth:`save` (for ``--resume``); returns self."""
        tensors = load_file(str(path))
        if set(tensors) != set(self.mean):
            raise ValueError(f"{path}: averaged weights do not fit this model")
        self.count = int(weights_metadata(path).get("count", "0"))
        self.mean = {k: tensors[k].float() for k in self.mean}
        return self


def finish_average(
    average: WeightAverage, model: torch.nn.Module, batches: Iterable[object], max_batches: int = 50, device: str = "cpu",
) -> torch.nn.Module:
    """A copy of ``model`` carrying the averaged weights, its batch-norm statistics recomputed.

    Parameters
    ----------
    average : WeightAverage
        The running mean (at least one update).
    model : torch.nn.Module
        The trained model (left unchanged).
    batches : iterable
        Training batches (``images`` or ``(images, ...)`` tuples) for the batch-norm statistics.
    max_batches : int
        How many of them to use.
    device : str
        Where the copy runs.
    """
    if average.count < 1:
        raise ValueError("no weights were averaged")
    averaged = copy.deepcopy(model)
    with torch.no_grad():
        for k, p in averaged.named_parameters():
            p.copy_(average.mean[k].to(p.device, p.dtype))

    def images() -> Iterable[torch.Tensor]:
        for batch in itertools.islice(batches, max_batches):
            x = batch[0] if isinstance(batch, list | tuple) else batch
            yield x.to(device).contiguous(memory_format=torch.channels_last)

    with torch.no_grad():  # running statistics still update in train mode
        update_bn(images(), averaged, device=None)
    averaged.eval()
    return averaged
