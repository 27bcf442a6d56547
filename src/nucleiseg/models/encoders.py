"""Encoders: modules returning a list of feature maps at decreasing resolution.

Every encoder declares ``out_channels`` (channels of each returned feature, highest resolution
first) and ``reductions`` (each feature's downsampling factor relative to the input), in the
style of segmentation_models_pytorch, so decoders are built from those lists and fit any encoder.

Pretrained weights come only from local files: :func:`load_encoder_weights` reads a safetensors
file with a strict key check; nothing is ever downloaded.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from nucleiseg.models.blocks import BasicBlock, Bottleneck, DoubleConv, check_float, check_int

RESNET_LAYERS: dict[int, tuple[type[BasicBlock] | type[Bottleneck], tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
}


class PlainEncoder(nn.Module):
    """U-Net contracting path: ``depth`` levels of :class:`DoubleConv`, 2x2 max-pool between levels.

    Level ``k`` has ``base_channels * 2**k`` channels at ``1 / 2**k`` of the input resolution.

    Parameters
    ----------
    in_channels : int
        Input image channels.
    depth : int
        Number of resolution levels (``depth - 1`` poolings), 2..6.
    base_channels : int
        Channels of the full-resolution level.
    batch_norm : bool
        Batch normalisation after every convolution.
    dropout : float
        ``Dropout2d`` probability after the deepest level (the end of the contracting path).
    """

    def __init__(
        self, in_channels: int, depth: int = 4, base_channels: int = 32, batch_norm: bool = True, dropout: float = 0.0
    ) -> None:
        super().__init__()
        check_int("depth", depth, 2, 6)
        check_int("base_channels", base_channels, 1)
        self.out_channels: list[int] = [base_channels * 2**k for k in range(depth)]
        self.reductions: list[int] = [2**k for k in range(depth)]
        prev, blocks = in_channels, []
        for k, ch in enumerate(self.out_channels):
            blocks.append(DoubleConv(prev, ch, batch_norm, dropout if k == depth - 1 else 0.0))
            prev = ch
        self.blocks = nn.ModuleList(blocks)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Features of every level, full resolution first."""
        features = []
        for k, block in enumerate(self.blocks):
            x = block(self.pool(x) if k else x)
            features.append(x)
        return features


class ResNetEncoder(nn.Module):
    """ResNet-18/34/50 feature extractor (torchvision layout and parameter names).

    Stem: 7x7 stride-2 convolution, batch norm, ReLU, 3x3 stride-2 max-pool; then ``layer1`` ..
    ``layer4``. Returns five features at reductions 2 (stem), 4, 8, 16 and 32. Parameter names
    match torchvision's ``resnet18/34/50`` (without ``fc``), so converted ImageNet weights load.

    Parameters
    ----------
    in_channels : int
        Input image channels.
    depth : {18, 34, 50}
        ResNet variant (basic blocks for 18/34, bottlenecks for 50).
    width : float
        Channel multiplier: the stem has ``round(64 * width)`` channels (1.0 = standard ResNet).
    """

    def __init__(self, in_channels: int, depth: int = 18, width: float = 1.0) -> None:
        super().__init__()
        if depth not in RESNET_LAYERS:
            raise ValueError(f"ResNet depth must be one of {', '.join(map(str, RESNET_LAYERS))}; got {depth!r}")
        check_float("width", width, 0.0, 4.0, low_open=True)
        block, counts = RESNET_LAYERS[depth]
        stem = max(1, round(64 * width))
        self.conv1 = nn.Conv2d(in_channels, stem, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        prev, layers = stem, []
        for k, count in enumerate(counts):
            planes = stem * 2**k
            blocks = []
            for i in range(count):
                blocks.append(block(prev, planes, stride=2 if (k > 0 and i == 0) else 1))
                prev = planes * block.expansion
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.out_channels: list[int] = [stem] + [stem * 2**k * block.expansion for k in range(4)]
        self.reductions: list[int] = [2, 4, 8, 16, 32]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Features at reductions 2, 4, 8, 16, 32."""
        x = self.relu(self.bn1(self.conv1(x)))
        features = [x]
        x = self.maxpool(x)
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            features.append(x)
        return features


def _short_list(keys: list[str], limit: int = 5) -> str:
    """``a, b, c (+N more)`` for error messages."""
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more if keys else "none"


def load_encoder_weights(encoder: nn.Module, weights_path: str | Path) -> None:
    """Load an encoder's weights from a local safetensors file, checking keys strictly.

    The file holds the encoder's own ``state_dict`` (keys may carry an ``encoder.`` prefix, as
    when taken from a whole model). Two exceptions to the strict check make converted ImageNet
    checkpoints usable: keys starting with ``fc.`` (a classifier head) are ignored, and missing
    ``*.num_batches_tracked`` buffers keep their current values.

    Parameters
    ----------
    encoder : nn.Module
        The encoder to fill in place.
    weights_path : str or Path
        Local ``.safetensors`` file. Nothing is downloaded.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If the file is not readable safetensors, or keys or shapes do not match the encoder.
    """
    path = Path(weights_path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: encoder weights file not found")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"{path}: cannot read safetensors file ({exc})") from exc
    if state and all(k.startswith("encoder.") for k in state):
        state = {k[len("encoder."):]: v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    own = encoder.state_dict()
    for key in own:
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = own[key]
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(
            f"{path}: encoder weights do not match the model: missing {_short_list(missing)}; "
            f"unexpected {_short_list(unexpected)}"
        )
    for key, value in own.items():
        if state[key].shape != value.shape:
            found, wanted = tuple(state[key].shape), tuple(value.shape)
            raise ValueError(f"{path}: shape of {key} is {found} in the file but {wanted} in the model")
    encoder.load_state_dict(state, strict=True)
