"""Building blocks shared by the architectures.

Holds the common base class :class:`SegmentationModel` (pads any input size to a multiple of
the model's ``stride`` and crops the logits back), convolution units, the ResNet residual blocks
(with torchvision-compatible parameter names, so converted ImageNet weights load by key) and a
generic U-Net decoder that fits any encoder declaring its ``out_channels``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

UPSAMPLE_MODES = ("transpose", "bilinear")


# --------------------------------------------------------------------------- validation
def check_int(name: str, value: Any, low: int, high: int | None = None) -> int:
    """Return ``value`` if it is an int in ``[low, high]``, else raise a one-line ValueError."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be {bounds}, got {value}")
    return value


def check_float(name: str, value: Any, low: float, high: float, *, low_open: bool = False) -> float:
    """Return ``value`` as float if it is a number in ``[low, high]`` (``(low, high]`` if ``low_open``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if value > high or value < low or (low_open and value == low):
        raise ValueError(f"{name} must be in {'(' if low_open else '['}{low}, {high}], got {value}")
    return float(value)


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> Any:
    """Return ``value`` if it is one of ``choices``, else raise a one-line ValueError."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


# --------------------------------------------------------------------------- base class
def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad the bottom/right of a ``(B, C, H, W)`` tensor so ``H`` and ``W`` divide by ``multiple``.

    Reflect padding is used when the image is larger than the pad (the usual case), replicate
    padding otherwise (reflection needs ``pad < size``).
    """
    h, w = x.shape[-2], x.shape[-1]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


class SegmentationModel(nn.Module):
    """Base class of every nucleiseg network.

    Subclasses set ``in_channels``, ``out_channels``, ``stride`` (the factor by which the input
    sides are internally divisible) and ``encoder``, and implement :meth:`forward_padded` for
    inputs whose sides divide by ``stride``. :meth:`forward` accepts any ``H, W``: it pads to the
    next multiple of ``stride`` and crops the raw logits ``(B, out_channels, H, W)`` back.
    """

    in_channels: int
    out_channels: int
    stride: int
    encoder: nn.Module

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for an input whose height and width are multiples of ``stride``."""
        raise NotImplementedError(f"{type(self).__name__} must implement forward_padded")

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ValueError unless ``x`` is ``(B, in_channels, H, W)``."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected input of shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Raw logits ``(B, out_channels, H, W)`` for an input ``(B, in_channels, H, W)`` of any size."""
        if torch.jit.is_tracing():
            # Traced graphs (legacy ONNX export) cannot keep the shape-dependent padding below:
            # they take sides divisible by ``stride``, as the tiler provides.
            return self.forward_padded(x)
        self.check_input(x)
        h, w = x.shape[-2], x.shape[-1]
        return self.forward_padded(pad_to_multiple(x, self.stride))[..., :h, :w]


# --------------------------------------------------------------------------- conv units
def conv_bn_relu(
    in_ch: int, out_ch: int, kernel_size: int = 3, stride: int = 1, batch_norm: bool = True, relu: bool = True
) -> nn.Sequential:
    """``Conv2d`` (same padding) + optional ``BatchNorm2d`` + optional ``ReLU``."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_ch, out_ch, kernel_size, stride=stride, padding=kernel_size // 2, bias=not batch_norm)
    ]
    if batch_norm:
        layers.append(nn.BatchNorm2d(out_ch))
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class DoubleConv(nn.Sequential):
    """Two 3x3 conv-BN-ReLU units, optionally followed by ``Dropout2d`` (the U-Net block)."""

    def __init__(self, in_ch: int, out_ch: int, batch_norm: bool = True, dropout: float = 0.0) -> None:
        layers = [*conv_bn_relu(in_ch, out_ch, batch_norm=batch_norm)]
        layers += conv_bn_relu(out_ch, out_ch, batch_norm=batch_norm)
        if dropout > 0:
            layers.append(nn.Dropout2d(dropout))
        super().__init__(*layers)


def upsample_by(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Bilinearly enlarge ``x`` by an integer ``factor`` (``align_corners=False``).

    A scale factor rather than a target size keeps traced/exported graphs shape-generic.
    """
    return x if factor == 1 else F.interpolate(x, scale_factor=float(factor), mode="bilinear", align_corners=False)


# --------------------------------------------------------------------------- ResNet blocks
def _shortcut(in_ch: int, out_ch: int, stride: int) -> nn.Module | None:
    """1x1 projection shortcut when shape changes, else ``None`` (identity)."""
    if stride == 1 and in_ch == out_ch:
        return None
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch))


class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convs), as in ResNet-18/34; torchvision parameter names."""

    expansion = 1

    def __init__(self, in_ch: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = _shortcut(in_ch, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual output ``relu(F(x) + shortcut(x))``."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """ResNet bottleneck block (1x1, strided 3x3, 1x1 x4), as in ResNet-50 v1.5."""

    expansion = 4

    def __init__(self, in_ch: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_ch = planes * self.expansion
        self.conv1 = nn.Conv2d(in_ch, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_ch, out_ch, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual output ``relu(F(x) + shortcut(x))``."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


# --------------------------------------------------------------------------- U-Net decoder
class DecoderBlock(nn.Module):
    """Upsample x2 to ``out_ch`` channels, concatenate the skip, then :class:`DoubleConv`.

    ``upsample="transpose"`` uses a 2x2 stride-2 transposed convolution (classic U-Net);
    ``"bilinear"`` uses bilinear resizing followed by a 1x1 convolution.
    """

    def __init__(
        self, in_ch: int, skip_ch: int, out_ch: int, upsample: str = "transpose", batch_norm: bool = True
    ) -> None:
        super().__init__()
        check_choice("upsample", upsample, UPSAMPLE_MODES)
        if upsample == "transpose":
            self.up: nn.Module = nn.ConvTranspose2d(in_ch, out_ch, 2, stride=2)
        else:
            self.up = nn.Sequential(
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False), nn.Conv2d(in_ch, out_ch, 1)
            )
        self.conv = DoubleConv(out_ch + skip_ch, out_ch, batch_norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """Decode ``x`` (half the resolution of ``skip``) with the skip connection."""
        return self.conv(torch.cat([self.up(x), skip], dim=1))


class UNetDecoder(nn.Module):
    """U-Net decoder over any encoder's feature list.

    Parameters
    ----------
    encoder_channels : sequence of int
        Channels of the encoder features, highest resolution first; consecutive features differ
        by a factor 2 in resolution.
    decoder_channels : sequence of int
        Output channels of each decoder block, deepest first (``len(encoder_channels) - 1``).
    upsample : {"transpose", "bilinear"}
        How each block doubles the resolution.
    batch_norm : bool
        Use batch normalisation in the blocks.
    """

    def __init__(
        self,
        encoder_channels: Sequence[int],
        decoder_channels: Sequence[int],
        upsample: str = "transpose",
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        if len(decoder_channels) != len(encoder_channels) - 1:
            raise ValueError(f"decoder_channels needs {len(encoder_channels) - 1} entries, got {len(decoder_channels)}")
        skips = list(encoder_channels[:-1])[::-1]
        blocks, prev = [], encoder_channels[-1]
        for skip_ch, out_ch in zip(skips, decoder_channels):
            blocks.append(DecoderBlock(prev, skip_ch, out_ch, upsample, batch_norm))
            prev = out_ch
        self.blocks = nn.ModuleList(blocks)
        self.out_channels = int(prev)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Full-resolution (of ``features[0]``) decoded features."""
        x = features[-1]
        for block, skip in zip(self.blocks, features[-2::-1]):
            x = block(x, skip)
        return x
