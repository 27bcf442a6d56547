"""Several trained networks as one: the mean of their probabilities.

An ensemble is an ordinary model (architecture ``"ensemble"``), so every path that runs a
model (the pipeline, TTA, ONNX export and int8, the CLI, the web app, Dask) runs it unchanged.
Its weights are its members' weights under ``members.<i>.``; see
:func:`nucleiseg.training.ensemble.make_ensemble`, which builds one from run folders.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


class Ensemble(nn.Module):
    """Average the sigmoid probabilities of ``members`` and return the logits of the mean.

    Parameters
    ----------
    members : sequence of nn.Module
        Networks with the same input and output channels, each returning logits.
    eps : float
        The mean probability is clipped to ``[eps, 1 - eps]`` before the logit, so the
        sigmoid that every predictor applies gives the mean back (to within ``eps``).
    """

    def __init__(self, members: Sequence[nn.Module], eps: float = 1e-6) -> None:
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got {len(members)}")
        channels = {(int(m.in_channels), int(m.out_channels)) for m in members}
        if len(channels) != 1:
            raise ValueError(f"ensemble members differ in (in, out) channels: {sorted(channels)}")
        self.members = nn.ModuleList(members)
        self.in_channels, self.out_channels = channels.pop()
        self.stride = math.lcm(*(int(getattr(m, "stride", 1)) for m in members))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the members' mean probability, ``(B, out_channels, H, W)``."""
        mean = torch.stack([torch.sigmoid(m(x).float()) for m in self.members]).mean(dim=0)
        return torch.logit(mean, eps=self.eps)
