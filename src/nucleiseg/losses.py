"""Segmentation losses on logits: weighted BCE, soft Dice, soft Jaccard, focal, and their mix.

All functions take raw logits and 0/1 (or soft) targets of shape ``(B, C, H, W)`` (or
``(B, H, W)``, treated as one channel) and return a scalar tensor. Overlap losses (Dice,
Jaccard) are computed per sample and per channel, with additive smoothing, then averaged, so an
empty target predicted as empty costs ~0. Pixel-wise losses (BCE, focal) accept per-pixel
weights ``(B, H, W)`` and return the weighted mean ``sum(w * l) / sum(w)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nucleiseg.config import LossConfig

_SMOOTH = 1.0


def _as_4d(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate matching shapes and return float32 ``(B, C, H, W)`` views."""
    if logits.shape != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} differ in shape")
    if logits.ndim == 3:
        logits, targets = logits[:, None], targets[:, None]
    if logits.ndim != 4:
        raise ValueError(f"expected (B, C, H, W) or (B, H, W) tensors, got {tuple(logits.shape)}")
    return logits.float(), targets.float()


def _pixel_weights(weights: torch.Tensor | None, logits: torch.Tensor) -> torch.Tensor | None:
    """Validate ``(B, H, W)`` pixel weights and shape them ``(B, 1, H, W)`` for broadcasting."""
    if weights is None:
        return None
    b, _, h, w = logits.shape
    if tuple(weights.shape) != (b, h, w):
        raise ValueError(f"weights must have shape {(b, h, w)}, got {tuple(weights.shape)}")
    return weights.float()[:, None]


def _weighted_mean(values: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """``sum(w * v) / sum(w)`` over all elements (plain mean without weights)."""
    if weights is None:
        return values.mean()
    w = weights.expand_as(values)
    return (values * w).sum() / w.sum().clamp_min(1e-8)


def weighted_bce(
    logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Binary cross-entropy on logits, optionally pixel-weighted.

    Parameters
    ----------
    logits, targets : torch.Tensor
        ``(B, C, H, W)`` or ``(B, H, W)``; targets in [0, 1].
    weights : torch.Tensor or None
        ``(B, H, W)`` non-negative pixel weights, shared by all channels.

    Returns
    -------
    torch.Tensor
        Scalar weighted mean BCE.
    """
    logits, targets = _as_4d(logits, targets)
    w = _pixel_weights(weights, logits)
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return _weighted_mean(bce, w)


def focal_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    gamma: float = 2.0,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Focal loss ``(1 - p_t) ** gamma * BCE`` (Lin et al. 2017); ``gamma=0`` is plain BCE.

    Parameters
    ----------
    logits, targets : torch.Tensor
        ``(B, C, H, W)`` or ``(B, H, W)``.
    gamma : float
        Focusing exponent (>= 0).
    weights : torch.Tensor or None
        ``(B, H, W)`` pixel weights.

    Returns
    -------
    torch.Tensor
        Scalar weighted mean focal loss.
    """
    if gamma < 0:
        raise ValueError(f"focal gamma must be >= 0, got {gamma}")
    logits, targets = _as_4d(logits, targets)
    w = _pixel_weights(weights, logits)
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    if gamma > 0:
        p = torch.sigmoid(logits)
        p_t = p * targets + (1 - p) * (1 - targets)
        bce = (1 - p_t).clamp_min(0).pow(gamma) * bce
    return _weighted_mean(bce, w)


def _overlap_sums(
    logits: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per sample and channel: intersection, sum of probabilities, sum of targets."""
    logits, targets = _as_4d(logits, targets)
    p = torch.sigmoid(logits)
    dims = (2, 3)
    return (p * targets).sum(dims), p.sum(dims), targets.sum(dims)


def soft_dice_loss(logits: torch.Tensor, targets: torch.Tensor, smooth: float = _SMOOTH) -> torch.Tensor:
    """``1 - (2 |P∩T| + s) / (|P| + |T| + s)`` per sample and channel, averaged.

    Parameters
    ----------
    logits, targets : torch.Tensor
        ``(B, C, H, W)`` or ``(B, H, W)``.
    smooth : float
        Additive smoothing ``s`` (> 0); makes empty-vs-empty cost ~0.

    Returns
    -------
    torch.Tensor
        Scalar in [0, 1].
    """
    if smooth <= 0:
        raise ValueError(f"smooth must be > 0, got {smooth}")
    inter, ps, ts = _overlap_sums(logits, targets)
    return (1 - (2 * inter + smooth) / (ps + ts + smooth)).mean()


def soft_jaccard_loss(logits: torch.Tensor, targets: torch.Tensor, smooth: float = _SMOOTH) -> torch.Tensor:
    """``1 - (|P∩T| + s) / (|P| + |T| - |P∩T| + s)`` per sample and channel, averaged.

    Parameters
    ----------
    logits, targets : torch.Tensor
        ``(B, C, H, W)`` or ``(B, H, W)``.
    smooth : float
        Additive smoothing ``s`` (> 0).

    Returns
    -------
    torch.Tensor
        Scalar in [0, 1].
    """
    if smooth <= 0:
        raise ValueError(f"smooth must be > 0, got {smooth}")
    inter, ps, ts = _overlap_sums(logits, targets)
    return (1 - (inter + smooth) / (ps + ts - inter + smooth)).mean()


class CombinedLoss(nn.Module):
    """Per-channel weighted sum of BCE, Dice, Jaccard and focal losses (see :func:`build_loss`)."""

    def __init__(self, cfg: LossConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def channel_weight(self, c: int) -> float:
        """Weight of target channel ``c`` (1 beyond ``cfg.channel_weights``)."""
        cw = self.cfg.channel_weights
        return float(cw[c]) if c < len(cw) else 1.0

    def forward(
        self, logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Scalar loss of ``logits`` vs ``targets`` ``(B, C, H, W)``, pixel ``weights`` ``(B, H, W)``.

        With ``cfg.distill > 0`` the targets are ``(B, 2C, H, W)``: the ground truth's ``C``
        channels, then a teacher's probabilities, each channel of which adds ``distill`` times
        its BCE (unweighted pixels) with the channel's weight.
        """
        if logits.ndim != 4:
            raise ValueError(f"expected (B, C, H, W) logits, got {tuple(logits.shape)}")
        cfg = self.cfg
        k = logits.shape[1]
        teacher = None
        if cfg.distill:
            if targets.ndim != 4 or targets.shape[1] != 2 * k:
                raise ValueError(f"distillation needs {2 * k} target channels (truth, then teacher), got {tuple(targets.shape)}")
            targets, teacher = targets[:, :k], targets[:, k:]
        total = logits.new_zeros((), dtype=torch.float32)
        for c in range(k):
            cw = self.channel_weight(c)
            if cw == 0:
                continue
            lg, tg = logits[:, c : c + 1], targets[:, c : c + 1]
            part = lg.new_zeros((), dtype=torch.float32)
            if teacher is not None:
                part = part + cfg.distill * weighted_bce(lg, teacher[:, c : c + 1])
            if cfg.bce:
                part = part + cfg.bce * weighted_bce(lg, tg, weights)
            if cfg.dice:
                part = part + cfg.dice * soft_dice_loss(lg, tg)
            if cfg.jaccard:
                part = part + cfg.jaccard * soft_jaccard_loss(lg, tg)
            if cfg.focal:
                part = part + cfg.focal * focal_loss(lg, tg, cfg.focal_gamma, weights)
            total = total + cw * part
        return total


def build_loss(cfg: LossConfig) -> nn.Module:
    """Build the training loss described by ``cfg``.

    For each target channel ``c``: ``channel_weights[c] * (bce * BCE_w + dice * Dice +
    jaccard * Jaccard + focal * Focal_w)``, summed over channels; channels beyond
    ``channel_weights`` get weight 1. ``_w`` terms use the pixel weights passed to ``forward``
    (e.g. :func:`nucleiseg.transforms.gap_weights`).

    Parameters
    ----------
    cfg : LossConfig
        Term coefficients (>= 0, at least one > 0), focal gamma and channel weights.

    Returns
    -------
    torch.nn.Module
        ``loss(logits, targets, weights=None) -> scalar tensor``.
    """
    if cfg.distill < 0:
        raise ValueError(f"loss coefficient distill must be >= 0, got {cfg.distill}")
    terms = {"bce": cfg.bce, "dice": cfg.dice, "jaccard": cfg.jaccard, "focal": cfg.focal}
    for name, value in terms.items():
        if value < 0:
            raise ValueError(f"loss coefficient {name} must be >= 0, got {value}")
    if not any(terms.values()):
        raise ValueError("at least one of bce, dice, jaccard, focal must be > 0")
    if cfg.focal_gamma < 0:
        raise ValueError(f"focal_gamma must be >= 0, got {cfg.focal_gamma}")
    if any(w < 0 for w in cfg.channel_weights):
        raise ValueError(f"channel_weights must be >= 0, got {cfg.channel_weights}")
    return CombinedLoss(cfg)
