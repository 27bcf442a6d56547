"""Segmentation networks (pure PyTorch): U-Net, U-Net++, LinkNet, HRNet and Res-U-Net.

All models return raw logits ``(B, out_channels, H, W)`` for inputs of any size and expose an
int ``stride``. Build them by name with :func:`create_model`.
"""

from __future__ import annotations

from nucleiseg.models.blocks import SegmentationModel
from nucleiseg.models.encoders import load_encoder_weights
from nucleiseg.models.registry import count_parameters, create_model, list_models, model_params

__all__ = [
    "SegmentationModel",
    "count_parameters",
    "create_model",
    "list_models",
    "load_encoder_weights",
    "model_params",
]
