"""Tests of nucleiseg.losses on small synthetic tensors with known answers."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from nucleiseg.config import LossConfig
from nucleiseg.losses import build_loss, focal_loss, soft_dice_loss, soft_jaccard_loss, weighted_bce


def _targets(b: int = 2, c: int = 3, h: int = 16, w: int = 16, seed: int = 0) -> torch.Tensor:
    """Random 0/1 targets with a guaranteed-empty last channel of sample 0."""
    g = torch.Generator().manual_seed(seed)
    t = (torch.rand(b, c, h, w, generator=g) > 0.6).float()
    t[0, -1] = 0
    return t


def _perfect(t: torch.Tensor) -> torch.Tensor:
    """Logits that predict ``t`` with near certainty."""
    return (t * 2 - 1) * 20.0


def test_perfect_prediction_costs_nearly_nothing() -> None:
    t = _targets()
    logits = _perfect(t)
    assert soft_dice_loss(logits, t).item() < 1e-4
    assert soft_jaccard_loss(logits, t).item() < 1e-4
    assert weighted_bce(logits, t).item() < 1e-6
    assert focal_loss(logits, t).item() < 1e-6
    loss = build_loss(LossConfig(bce=1, dice=1, jaccard=1, focal=1))
    assert loss(logits, t).item() < 1e-3


def test_empty_target_and_empty_prediction_is_zero() -> None:
    t = torch.zeros(1, 1, 8, 8)
    assert soft_dice_loss(torch.full_like(t, -20.0), t).item() < 1e-6
    assert soft_jaccard_loss(torch.full_like(t, -20.0), t).item() < 1e-6
    assert soft_dice_loss(torch.full_like(t, 20.0), t).item() > 0.95  # predicting everything is wrong


def test_worse_predictions_cost_more() -> None:
    t = _targets()
    good = _perfect(t) * 0.1  # right side of 0.5, unsure
    flipped = t.clone()
    flipped[..., :8] = 1 - flipped[..., :8]
    half = _perfect(flipped) * 0.1  # half the pixels wrong
    wrong = -good
    fns = [weighted_bce, soft_dice_loss, soft_jaccard_loss, focal_loss, build_loss(LossConfig())]
    for fn in fns:
        a, b, c = fn(good, t).item(), fn(half, t).item(), fn(wrong, t).item()
        assert a < b < c, fn


def test_known_values() -> None:
    logits = torch.zeros(1, 1, 2, 2)  # p = 0.5 everywhere
    t = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    assert weighted_bce(logits, t).item() == pytest.approx(math.log(2))
    # dice: (2 * 0.5 + 1) / (2 + 1 + 1) = 0.5; jaccard: (0.5 + 1) / (2 + 1 - 0.5 + 1) = 3/7
    assert soft_dice_loss(logits, t).item() == pytest.approx(0.5)
    assert soft_jaccard_loss(logits, t).item() == pytest.approx(1 - 3 / 7)
    # focal with gamma 2 at p_t = 0.5: 0.25 * log 2
    assert focal_loss(logits, t, gamma=2.0).item() == pytest.approx(0.25 * math.log(2))


def test_pixel_weights_change_bce_and_ones_do_not() -> None:
    t = _targets()
    logits = torch.randn(t.shape, generator=torch.Generator().manual_seed(1))
    b, _, h, w = t.shape
    plain = weighted_bce(logits, t)
    assert weighted_bce(logits, t, torch.ones(b, h, w)).item() == pytest.approx(plain.item(), rel=1e-6)
    assert plain.item() == pytest.approx(F.binary_cross_entropy_with_logits(logits, t).item(), rel=1e-6)
    weights = torch.ones(b, h, w)
    weights[:, :4] = 10.0
    weighted = weighted_bce(logits, t, weights)
    per_pixel = F.binary_cross_entropy_with_logits(logits, t, reduction="none")
    expected = (per_pixel * weights[:, None]).sum() / (weights.sum() * t.shape[1])
    assert weighted.item() == pytest.approx(expected.item(), rel=1e-5)
    assert weighted.item() != pytest.approx(plain.item(), rel=1e-3)
    loss = build_loss(LossConfig(dice=0.0))
    assert loss(logits, t, weights).item() != pytest.approx(loss(logits, t).item(), rel=1e-3)
    with pytest.raises(ValueError, match="weights"):
        weighted_bce(logits, t, torch.ones(b, h + 1, w))


def test_focal_with_zero_gamma_is_bce_and_downweights_easy_pixels() -> None:
    t = _targets()
    logits = torch.randn(t.shape, generator=torch.Generator().manual_seed(2)) * 3
    weights = torch.rand(t.shape[0], *t.shape[2:], generator=torch.Generator().manual_seed(3))
    assert focal_loss(logits, t, gamma=0.0, weights=weights).item() == pytest.approx(
        weighted_bce(logits, t, weights).item(), rel=1e-6
    )
    assert focal_loss(logits, t, gamma=2.0).item() < weighted_bce(logits, t).item()


def test_channel_weights_and_extra_channels() -> None:
    t = _targets(c=4)
    logits = torch.randn(t.shape, generator=torch.Generator().manual_seed(4))
    cfg = LossConfig(bce=1.0, dice=0.5, channel_weights=[2.0, 0.0])
    total = build_loss(cfg)(logits, t)
    parts = [(logits[:, c : c + 1], t[:, c : c + 1]) for c in range(4)]
    per_channel = [weighted_bce(lg, tg) + 0.5 * soft_dice_loss(lg, tg) for lg, tg in parts]
    expected = 2.0 * per_channel[0] + 0.0 * per_channel[1] + per_channel[2] + per_channel[3]
    assert total.item() == pytest.approx(expected.item(), rel=1e-5)


def test_gradient_flows_and_points_downhill() -> None:
    t = _targets()
    logits = torch.zeros(t.shape, requires_grad=True)
    loss = build_loss(LossConfig(jaccard=0.5, focal=0.5))(logits, t, torch.ones(t.shape[0], *t.shape[2:]))
    loss.backward()
    grad = logits.grad
    assert grad is not None and torch.isfinite(grad).all()
    # the gradient pushes foreground logits up and background logits down
    assert (grad[t == 1] < 0).all() and (grad[t == 0] > 0).all()
    step = build_loss(LossConfig(jaccard=0.5, focal=0.5))(logits.detach() - grad * 10, t)
    assert step.item() < loss.item()


def test_three_dim_inputs_and_validation() -> None:
    t = _targets(c=1)[:, 0]
    logits = _perfect(t)
    assert soft_dice_loss(logits, t).item() < 1e-4
    with pytest.raises(ValueError, match="shape"):
        soft_dice_loss(logits, t[:, :4])
    with pytest.raises(ValueError, match="at least one"):
        build_loss(LossConfig(bce=0, dice=0))
    with pytest.raises(ValueError, match="bce"):
        build_loss(LossConfig(bce=-1))
    with pytest.raises(ValueError, match="gamma"):
        focal_loss(logits, t, gamma=-1.0)
