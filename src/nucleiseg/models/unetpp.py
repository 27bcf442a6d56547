"""U-Net++ (Zhou et al., 2018): nested dense skip pathways between encoder and decoder.

Node ``X^{i,j}`` (level ``i``, column ``j``) is a :class:`DoubleConv` over the concatenation of
all earlier nodes of its level ``X^{i,0..j-1}`` and the bilinearly upsampled ``X^{i+1,j-1}``.
``X^{i,0}`` are the encoder features. The top row ``X^{0,1..depth-1}`` feeds the output head(s).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from nucleiseg.models.blocks import DoubleConv, SegmentationModel, check_int, pad_to_multiple
from nucleiseg.models.encoders import PlainEncoder, load_encoder_weights


class UNetPlusPlus(SegmentationModel):
    """U-Net++ with optional deep supervision; returns raw logits.

    With ``deep_supervision=True`` every top-row node ``X^{0,j}`` has its own 1x1 head:

    * training mode: the output is the **average of all heads' logits** (one tensor, so any
      loss applies unchanged; gradients reach every head and every column);
    * eval mode: the output is chosen by ``head``: ``"last"`` (``X^{0,depth-1}``, default), an
      int index into the heads (``0`` is ``X^{0,1}``, negative counts from the end; only the
      nodes that head needs are computed: the pruned U-Net++), or ``"mean"`` (average).

    Use :meth:`forward_heads` to get every head's logits separately.

    Parameters
    ----------
    in_channels, out_channels : int
        Input image channels and output logit channels.
    depth : int
        Number of resolution levels, 2..6 (``stride = 2**(depth-1)``).
    base_channels : int
        Channels of level 0, doubled at every level.
    batch_norm : bool
        Batch normalisation after every convolution.
    deep_supervision : bool
        One head per top-row node (see above) instead of a single head on the last one.
    head : {"last", "mean"} or int
        Head used in eval mode with deep supervision (must be ``"last"`` without it).
    weights_path : str, optional
        Local safetensors file with the encoder's weights.
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        *,
        depth: int = 4,
        base_channels: int = 32,
        batch_norm: bool = True,
        deep_supervision: bool = False,
        head: str | int = "last",
        weights_path: str | Path | None = None,
    ) -> None:
        super().__init__()
        check_int("depth", depth, 2, 6)
        check_int("base_channels", base_channels, 1)
        n_heads = depth - 1 if deep_supervision else 1
        if isinstance(head, bool) or not (head in ("last", "mean") or isinstance(head, int)):
            raise ValueError(f"head must be 'last', 'mean' or an int index; got {head!r}")
        if isinstance(head, int):
            if not deep_supervision:
                raise ValueError("head may only be an index or 'mean' with deep_supervision=True")
            check_int("head", head, -n_heads, n_heads - 1)
            head = head % n_heads
        elif head == "mean" and not deep_supervision:
            raise ValueError("head may only be an index or 'mean' with deep_supervision=True")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.depth, self.deep_supervision, self.head = depth, bool(deep_supervision), head
        self.stride = 2 ** (depth - 1)
        self.encoder = PlainEncoder(in_channels, depth, base_channels, bool(batch_norm))
        ch = self.encoder.out_channels
        self.nodes = nn.ModuleDict(
            {
                f"x{i}_{j}": DoubleConv(ch[i] * j + ch[i + 1], ch[i], bool(batch_norm))
                for j in range(1, depth)
                for i in range(depth - j)
            }
        )
        self.heads = nn.ModuleList([nn.Conv2d(ch[0], out_channels, 1) for _ in range(n_heads)])
        if weights_path is not None:
            load_encoder_weights(self.encoder, weights_path)

    def _top_row(self, x: torch.Tensor, last_column: int) -> list[torch.Tensor]:
        """Top-row nodes ``X^{0,1..last_column}``, computing only the nodes they depend on."""
        grid = [[f] for f in self.encoder(x)]
        for j in range(1, last_column + 1):
            for i in range(min(self.depth - j, last_column - j + 1)):
                up = F.interpolate(grid[i + 1][j - 1], scale_factor=2.0, mode="bilinear", align_corners=False)
                grid[i].append(self.nodes[f"x{i}_{j}"](torch.cat([*grid[i][:j], up], dim=1)))
        return grid[0][1:]

    def _all_heads(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Logits of every head (a single one without deep supervision)."""
        top = self._top_row(x, self.depth - 1)
        if not self.deep_supervision:
            return [self.heads[0](top[-1])]
        return [head(node) for head, node in zip(self.heads, top)]

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for an input whose sides divide by ``stride`` (see the class docstring)."""
        if self.deep_supervision and not self.training and isinstance(self.head, int):
            return self.heads[self.head](self._top_row(x, self.head + 1)[-1])
        outputs = self._all_heads(x)
        if len(outputs) == 1 or (not self.training and self.head == "last"):
            return outputs[-1]
        return torch.stack(outputs).mean(dim=0)

    def forward_heads(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every head's logits ``(B, out_channels, H, W)``, for an input of any size."""
        self.check_input(x)
        h, w = x.shape[-2], x.shape[-1]
        return [out[..., :h, :w] for out in self._all_heads(pad_to_multiple(x, self.stride))]
