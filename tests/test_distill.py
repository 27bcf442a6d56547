"""Knowledge distillation (issue 15): a teacher's probabilities as soft targets next to the truth."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nucleiseg.config import AugmentConfig, LossConfig, NormalizeConfig, TargetConfig, TrainConfig
from nucleiseg.losses import build_loss
from nucleiseg.training.data import CropDataset, TrainingSample
from nucleiseg.transforms import make_targets


def _disks(h: int = 96, w: int = 80, seed: int = 0) -> TrainingSample:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    labels = np.zeros((h, w), np.int32)
    for n in range(1, 7):
        cy, cx, r = rng.uniform(10, h - 10), rng.uniform(10, w - 10), rng.uniform(4, 8)
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = n
    image = np.repeat((0.1 + 0.7 * (labels > 0))[:, :, None], 3, axis=2).astype(np.float16)
    return TrainingSample("disks", image, labels)


def test_distill_loss_adds_the_teachers_bce_per_channel():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 16, 16)
    truth = (torch.rand(2, 3, 16, 16) > 0.5).float()
    teacher = torch.rand(2, 3, 16, 16)
    weights = torch.rand(2, 16, 16) + 0.5
    plain = build_loss(LossConfig())(logits, truth, weights)
    got = build_loss(LossConfig(distill=0.5))(logits, torch.cat([truth, teacher], 1), weights)
    extra = sum(cw * F.binary_cross_entropy_with_logits(logits[:, c], teacher[:, c]) for c, cw in enumerate((1.0, 0.5, 0.5)))
    assert float(got) == pytest.approx(float(plain + 0.5 * extra), rel=1e-5)
    # a student equal to its teacher pays only the teacher's own entropy
    p = torch.full((1, 3, 4, 4), 0.7)
    same = build_loss(LossConfig(bce=1.0, dice=0.0, distill=1.0, gap_weight=0.0))
    entropy = -(0.7 * np.log(0.7) + 0.3 * np.log(0.3)) * 2.0
    loss = same(torch.logit(p), torch.cat([torch.ones_like(p), p], 1)) - build_loss(LossConfig(bce=1.0, dice=0.0))(torch.logit(p), torch.ones_like(p))
    assert float(loss) == pytest.approx(entropy, rel=1e-5)
    with pytest.raises(ValueError, match="6 target channels"):
        build_loss(LossConfig(distill=1.0))(logits, truth, weights)
    with pytest.raises(ValueError, match="distill"):
        build_loss(LossConfig(distill=-1.0))


def test_a_teacher_and_the_distill_weight_come_together():
    TrainConfig(teacher="accurate", loss=LossConfig(distill=1.0))
    for teacher, distill in (("accurate", 0.0), (None, 1.0)):
        with pytest.raises(ValueError, match="teacher"):
            TrainConfig(teacher=teacher, loss=LossConfig(distill=distill))


def test_teacher_maps_follow_the_crops_geometry():
    """A teacher that equals the truth's targets stays equal to them through flips, rotations and crops
    (away from the crop's edge, where the truth's contours of cut nuclei are drawn anew)."""
    sample = _disks()
    cfg = TargetConfig()
    sample.teacher = make_targets(sample.labels, cfg).astype(np.float16)
    off = {f.name: 0.0 for f in dataclasses.fields(AugmentConfig) if f.name.endswith("_p")}
    augment = AugmentConfig(**{**off, "flips": True, "rotate90": True, "brightness_contrast_p": 1.0})
    ds = CropDataset([sample], 48, cfg, augment, length=6, seed=4)
    plain = CropDataset([dataclasses.replace(sample, teacher=None)], 48, cfg, augment, length=6, seed=4)
    for i in range(6):
        image, target, _ = ds[i]
        assert target.shape == (6, 48, 48)
        np.testing.assert_allclose(target[3:, 4:-4, 4:-4].numpy(), target[:3, 4:-4, 4:-4].numpy(), atol=1e-3)
        other_image, other_target, _ = plain[i]
        assert torch.equal(image, other_image) and torch.equal(target[:3], other_target)  # same crops as without a teacher


def test_training_with_a_teacher_on_real_images(tmp_path, dsb_root):
    from nucleiseg.training import train

    cfg = TrainConfig(
        data=str(dsb_root), out=str(tmp_path / "run"), limit_images=2, val_max_images=1, crop_size=48,
        batch_size=2, steps_per_epoch=2, epochs=1, threads=1, amp="off", teacher="default",
        loss=LossConfig(distill=1.0),
    )
    cfg.model.params = {"depth": 2, "base_channels": 4}
    out = train(cfg, progress=False)
    report = json.loads((out / "report.json").read_text())
    teacher = report["teacher"]
    assert teacher["source"] == "default" and teacher["images"] == 2 and len(teacher["model_hash"]) == 64
    assert np.isfinite(report["final"]["train_loss"])
    with pytest.raises(ValueError, match="normalises"):
        train(dataclasses.replace(cfg, out=str(tmp_path / "run2"), normalize=NormalizeConfig(low=2.0)), progress=False)
