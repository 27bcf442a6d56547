"""Res-U-Net: a U-Net decoder over a ResNet-18/34/50 encoder, with a full-resolution input skip."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from nucleiseg.models.blocks import (
    UPSAMPLE_MODES,
    DoubleConv,
    SegmentationModel,
    UNetDecoder,
    check_choice,
    check_float,
    check_int,
)
from nucleiseg.models.encoders import ResNetEncoder, load_encoder_weights


class ResUNet(SegmentationModel):
    """U-Net decoder on a ResNet encoder; returns raw logits (``stride = 32``).

    The ResNet features sit at reductions 2..32, so a small :class:`DoubleConv` on the input
    provides a full-resolution skip for the last decoder block, keeping nucleus boundaries
    crisp. Decoder blocks: upsample x2, concatenate the skip, two 3x3 conv-BN-ReLU.

    Parameters
    ----------
    in_channels, out_channels : int
        Input image channels and output logit channels.
    encoder_depth : {18, 34, 50}
        ResNet variant of the encoder.
    width : float
        Channel multiplier of the encoder (1.0 = standard ResNet).
    decoder_channels : sequence of 5 ints
        Output channels of the decoder blocks at reductions 16, 8, 4, 2, 1; the last one is also
        the width of the full-resolution input skip.
    upsample : {"bilinear", "transpose"}
        How decoder blocks double the resolution.
    weights_path : str, optional
        Local safetensors file with the ResNet encoder's weights (torchvision key names).
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        *,
        encoder_depth: int = 18,
        width: float = 1.0,
        decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
        upsample: str = "bilinear",
        weights_path: str | Path | None = None,
    ) -> None:
        super().__init__()
        check_choice("encoder_depth", encoder_depth, (18, 34, 50))
        check_float("width", width, 0.0, 4.0, low_open=True)
        check_choice("upsample", upsample, UPSAMPLE_MODES)
        if isinstance(decoder_channels, (str, bytes)) or len(decoder_channels) != 5:
            raise ValueError(f"decoder_channels must be a sequence of 5 ints, got {decoder_channels!r}")
        decoder_channels = [check_int("decoder_channels[]", c, 1) for c in decoder_channels]
        self.in_channels, self.out_channels = in_channels, out_channels
        self.stride = 32
        self.encoder = ResNetEncoder(in_channels, encoder_depth, width)
        self.input_skip = DoubleConv(in_channels, decoder_channels[-1])
        self.decoder = UNetDecoder([decoder_channels[-1], *self.encoder.out_channels], decoder_channels, upsample)
        self.head = nn.Conv2d(self.decoder.out_channels, out_channels, 1)
        if weights_path is not None:
            load_encoder_weights(self.encoder, weights_path)

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for an input whose sides divide by 32."""
        return self.head(self.decoder([self.input_skip(x), *self.encoder(x)]))
