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
    stem : int
        Space-to-depth factor before the encoder (1: none). With ``stem=2`` every 2x2 block of
        pixels becomes one pixel of ``4 * in_channels`` channels, the U-Net runs at half
        resolution and the head's ``4 * out_channels`` logits are put back in place
        (``PixelShuffle``): no layer runs at full resolution, where a U-Net spends much of its
        CPU time. ``stride`` becomes ``stem * 2**(depth-1)``.
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
        stem: int = 1,
        weights_path: str | Path | None = None,
    ) -> None:
        super().__init__()
        check_int("depth", depth, 2, 6)
        check_int("base_channels", base_channels, 1)
        check_float("dropout", dropout, 0.0, 1.0)
        check_choice("upsample", upsample, UPSAMPLE_MODES)
        check_int("stem", stem, 1, 4)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.stride = stem * 2 ** (depth - 1)
        # Parameter-free, so a stem of 1 leaves the state dict as it always was.
        self.unshuffle = nn.PixelUnshuffle(stem) if stem > 1 else nn.Identity()
        self.shuffle = nn.PixelShuffle(stem) if stem > 1 else nn.Identity()
        self.encoder = PlainEncoder(in_channels * stem**2, depth, base_channels, bool(batch_norm), dropout)
        skips = self.encoder.out_channels
        self.decoder = UNetDecoder(skips, skips[-2::-1], upsample, bool(batch_norm))
        self.head = nn.Conv2d(self.decoder.out_channels, out_channels * stem**2, 1)
        if weights_path is not None:
            load_encoder_weights(self.encoder, weights_path)

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for an input whose sides divide by ``stride``."""
        return self.shuffle(self.head(self.decoder(self.encoder(self.unshuffle(x)))))
