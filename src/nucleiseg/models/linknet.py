"""LinkNet (Chaurasia & Culurciello, 2017): ResNet encoder, light decoder, additive skips."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from nucleiseg.models.blocks import SegmentationModel, check_choice, check_float, conv_bn_relu
from nucleiseg.models.encoders import ResNetEncoder, load_encoder_weights


class LinkDecoderBlock(nn.Sequential):
    """1x1 conv to ``in/4``, 3x3 stride-2 transposed conv (x2 up), 1x1 conv to ``out`` (BN+ReLU each)."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        mid = max(1, in_ch // 4)
        super().__init__(
            *conv_bn_relu(in_ch, mid, kernel_size=1),
            nn.ConvTranspose2d(mid, mid, 3, stride=2, padding=1, output_padding=1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            *conv_bn_relu(mid, out_ch, kernel_size=1),
        )


class LinkNet(SegmentationModel):
    """LinkNet over a ResNet-18/34 encoder; returns raw logits (``stride = 32``).

    Each decoder block doubles the resolution and its output is **added** to the encoder
    feature of that resolution (reductions 16, 8, 4 and 2, the last being the ResNet stem). A
    full-resolution head follows: 3x3 stride-2 transposed conv, 3x3 conv, 1x1 conv to logits.

    Parameters
    ----------
    in_channels, out_channels : int
        Input image channels and output logit channels.
    encoder_depth : {18, 34}
        ResNet variant of the encoder.
    width : float
        Channel multiplier of the whole network (1.0: 64 stem channels, like the original).
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
        weights_path: str | Path | None = None,
    ) -> None:
        super().__init__()
        check_choice("encoder_depth", encoder_depth, (18, 34))
        check_float("width", width, 0.0, 4.0, low_open=True)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.stride = 32
        self.encoder = ResNetEncoder(in_channels, encoder_depth, width)
        ch = self.encoder.out_channels
        self.decoders = nn.ModuleList([LinkDecoderBlock(ch[k], ch[k - 1]) for k in range(len(ch) - 1, 0, -1)])
        mid = max(1, ch[0] // 2)
        self.final = nn.Sequential(
            nn.ConvTranspose2d(ch[0], mid, 3, stride=2, padding=1, output_padding=1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            *conv_bn_relu(mid, mid),
            nn.Conv2d(mid, out_channels, 1),
        )
        if weights_path is not None:
            load_encoder_weights(self.encoder, weights_path)

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for an input whose sides divide by 32."""
        features = self.encoder(x)
        d = features[-1]
        for decoder, skip in zip(self.decoders, features[-2::-1]):
            d = decoder(d) + skip
        return self.final(d)
