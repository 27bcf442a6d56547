"""Classic U-Net (Ronneberger et al., 2015): contracting path, expanding path, skip concatenation."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from nucleiseg.models.blocks import UPSAMPLE_MODES, SegmentationModel, UNetDecoder, check_choice, check_float, check_int
from nucleiseg.models.encoders import PlainEncoder, load_encoder_weights


class UNet(SegmentationModel):
    """U-Net with ``depth`` resolution levels; returns raw logits.

    Parameters
    ----------
    in_channels, out_channels : int
        Input image channels and output logit channels.
    depth : int
        Number of resolution levels, 2..6 (``depth - 1`` poolings; ``stride = 2**(depth-1)``).
        The original U-Net has 5 levels; the default 4 keeps the model CPU-friendly.
    base_channels : int
        Channels of the full-resolution level, doubled at every level (the original uses 64).
    batch_norm : bool
        Batch normalisation after every convolution.
    dropout : float
        ``Dropout2d`` probability at the end of the contracting path (0 disables).
    upsample : {"transpose", "bilinear"}
        2x2 transposed convolutions (original) or bilinear resize + 1x1 convolution.
    weights_path : str, optional
        Local safetensors file with the encoder's weights (see ``load_encoder_weights``).
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        *,
        depth: int = 4,
        base_channels: int = 32,
        batch_norm: bool = True,
        dropout: float = 0.0,
        upsample: str = "transpose",
        weights_path: str | Path | None = None,
    ) -> None:
        super().__init__()
        check_int("depth", depth, 2, 6)
        check_int("base_channels", base_channels, 1)
        check_float("dropout", dropout, 0.0, 1.0)
        check_choice("upsample", upsample, UPSAMPLE_MODES)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.stride = 2 ** (depth - 1)
        self.encoder = PlainEncoder(in_channels, depth, base_channels, bool(batch_norm), dropout)
        skips = self.encoder.out_channels
        self.decoder = UNetDecoder(skips, skips[-2::-1], upsample, bool(batch_norm))
        self.head = nn.Conv2d(self.decoder.out_channels, out_channels, 1)
        if weights_path is not None:
            load_encoder_weights(self.encoder, weights_path)

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for an input whose sides divide by ``stride``."""
        return self.head(self.decoder(self.encoder(x)))
