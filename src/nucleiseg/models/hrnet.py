"""HRNet-style network (Wang et al., 2019): parallel multi-resolution branches with repeated fusion.

A stem reduces the input by ``stem_stride`` (2 or 4). Branches at 1, 1/2, 1/4 and 1/8 of the
stem resolution (``width * [1, 2, 4, 8]`` channels) are added stage by stage; every module runs
residual blocks on each branch, then fuses all branches into each other (lower to higher:
1x1 conv + bilinear upsample; higher to lower: strided 3x3 convs). The head concatenates all
branches upsampled to the highest resolution, applies 1x1 convs and resizes to the input size.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from nucleiseg.models.blocks import BasicBlock, SegmentationModel, check_choice, check_int, conv_bn_relu, upsample_by
from nucleiseg.models.encoders import load_encoder_weights

PRESETS: dict[str, dict[str, object]] = {
    "standard": {"width": 18, "num_blocks": 2, "num_modules": (1, 2, 1)},
    "light": {"width": 16, "num_blocks": 1, "num_modules": (1, 1, 1)},
}


def _fuse_layer(in_ch: int, out_ch: int, steps_down: int) -> nn.Module:
    """Map a branch into another: 1x1 conv (upsampled later) or ``steps_down`` strided 3x3 convs."""
    if steps_down <= 0:
        return nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch))
    layers: list[nn.Module] = []
    for k in range(steps_down):
        last = k == steps_down - 1
        layers += conv_bn_relu(in_ch, out_ch if last else in_ch, stride=2, relu=not last)
    return nn.Sequential(*layers)


class HRModule(nn.Module):
    """``num_blocks`` basic blocks per branch, then all-to-all fusion of the branches."""

    def __init__(self, channels: Sequence[int], num_blocks: int) -> None:
        super().__init__()
        self.branches = nn.ModuleList([nn.Sequential(*[BasicBlock(c, c) for _ in range(num_blocks)]) for c in channels])
        # Branch j feeds branch i through i - j strided convs (j higher resolution) or a 1x1 conv.
        self.fuse = nn.ModuleList(
            [
                nn.ModuleList(
                    [nn.Identity() if j == i else _fuse_layer(cj, ci, i - j) for j, cj in enumerate(channels)]
                )
                for i, ci in enumerate(channels)
            ]
        )

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Process and fuse the branch features (highest resolution first)."""
        xs = [branch(x) for branch, x in zip(self.branches, xs)]
        out = []
        for i, row in enumerate(self.fuse):
            y = xs[i]
            for j, layer in enumerate(row):
                if j > i:
                    y = y + upsample_by(layer(xs[j]), 2 ** (j - i))
                elif j < i:
                    y = y + layer(xs[j])
            out.append(F.relu(y))
        return out


class HRNetBackbone(nn.Module):
    """Stem plus stages 1-4; returns the four branch features, highest resolution first.

    ``out_channels = width * [1, 2, 4, 8]`` at ``reductions = stem_stride * [1, 2, 4, 8]``.
    """

    def __init__(
        self, in_channels: int, width: int, num_blocks: int, num_modules: Sequence[int], stem_stride: int
    ) -> None:
        super().__init__()
        stem_ch = 2 * width
        self.stem = nn.Sequential(
            *conv_bn_relu(in_channels, stem_ch, stride=2),
            *conv_bn_relu(stem_ch, stem_ch, stride=2 if stem_stride == 4 else 1),
            *[BasicBlock(stem_ch, stem_ch) for _ in range(num_blocks)],
        )
        self.out_channels: list[int] = [width * 2**k for k in range(4)]
        self.reductions: list[int] = [stem_stride * 2**k for k in range(4)]
        ch = self.out_channels
        self.transitions = nn.ModuleList(
            [conv_bn_relu(stem_ch, ch[0]), conv_bn_relu(stem_ch, ch[1], stride=2)]
            + [conv_bn_relu(ch[k - 1], ch[k], stride=2) for k in (2, 3)]
        )
        self.stages = nn.ModuleList(
            [nn.Sequential(*[HRModule(ch[: s + 2], num_blocks) for _ in range(n)]) for s, n in enumerate(num_modules)]
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Branch features at reductions ``stem_stride * [1, 2, 4, 8]``."""
        x = self.stem(x)
        xs = [self.transitions[0](x), self.transitions[1](x)]
        for s, stage in enumerate(self.stages):
            if s > 0:
                xs.append(self.transitions[s + 1](xs[-1]))
            xs = stage(xs)
        return xs


class HRNet(SegmentationModel):
    """HRNet-style segmentation network; returns raw logits (``stride = 8 * stem_stride``).

    Parameters
    ----------
    in_channels, out_channels : int
        Input image channels and output logit channels.
    preset : {"standard", "light"}
        Default values of ``width``, ``num_blocks`` and ``num_modules``: ``standard`` is
        (18, 2, (1, 2, 1)), ``light`` is (16, 1, (1, 1, 1)). Explicit values override the preset.
    width : int, optional
        Channels of the highest-resolution branch (branches have ``width * [1, 2, 4, 8]``).
    num_blocks : int, optional
        Basic residual blocks per branch in every module (and in the stem stage).
    num_modules : sequence of 3 ints, optional
        Number of fusion modules in stages 2, 3 and 4 (with 2, 3 and 4 branches).
    stem_stride : {2, 4}
        Reduction of the stem; 2 keeps 1/2-resolution features for small nuclei, 4 is HRNet's.
    weights_path : str, optional
        Local safetensors file with the backbone's (``encoder``) weights.
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        *,
        preset: str = "standard",
        width: int | None = None,
        num_blocks: int | None = None,
        num_modules: Sequence[int] | None = None,
        stem_stride: int = 2,
        weights_path: str | Path | None = None,
    ) -> None:
        super().__init__()
        check_choice("preset", preset, tuple(PRESETS))
        width = check_int("width", PRESETS[preset]["width"] if width is None else width, 1)
        num_blocks = check_int("num_blocks", PRESETS[preset]["num_blocks"] if num_blocks is None else num_blocks, 1)
        modules = PRESETS[preset]["num_modules"] if num_modules is None else num_modules
        if isinstance(modules, (str, bytes)) or not isinstance(modules, Sequence) or len(modules) != 3:
            raise ValueError(f"num_modules must be a sequence of 3 ints (stages 2-4), got {modules!r}")
        modules = [check_int("num_modules[]", m, 1) for m in modules]
        check_choice("stem_stride", stem_stride, (2, 4))
        self.in_channels, self.out_channels = in_channels, out_channels
        self.stride = 8 * stem_stride
        self.encoder = HRNetBackbone(in_channels, width, num_blocks, modules, stem_stride)
        total = sum(self.encoder.out_channels)
        self.head = nn.Sequential(*conv_bn_relu(total, total, kernel_size=1), nn.Conv2d(total, out_channels, 1))
        if weights_path is not None:
            load_encoder_weights(self.encoder, weights_path)

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for an input whose sides divide by ``stride``."""
        xs = self.encoder(x)
        fused = torch.cat([upsample_by(f, 2**k) for k, f in enumerate(xs)], dim=1)
        return upsample_by(self.head(fused), self.encoder.reductions[0])
