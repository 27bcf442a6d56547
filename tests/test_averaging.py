"""Weight averaging over the end of a run (``TrainConfig.average_from``)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from nucleiseg.config import TrainConfig
from nucleiseg.models import create_model
from nucleiseg.training import load_weights, train
from nucleiseg.training.averaging import WeightAverage, finish_average
from nucleiseg.training.bundle import model_card
from nucleiseg.training.checkpoint import weights_metadata
from nucleiseg.training.trainer import AVERAGE_FILE, run_fraction


def _net() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1), torch.nn.BatchNorm2d(2), torch.nn.ReLU())


def test_mean_of_weights_and_round_trip(tmp_path):
    net = _net()
    average = WeightAverage(net)
    seen = []
    for value in (1.0, 2.0, 6.0):
        with torch.no_grad():
            for p in net.parameters():
                p.fill_(value)
        average.update(net)
        seen.append(value)
    assert average.count == 3
    for tensor in average.mean.values():
        assert torch.allclose(tensor, torch.full_like(tensor, 3.0))  # (1 + 2 + 6) / 3
    average.save(tmp_path / "avg.safetensors")
    again = WeightAverage(_net()).load(tmp_path / "avg.safetensors")
    assert again.count == 3 and all(torch.equal(again.mean[k], average.mean[k]) for k in average.mean)
    other = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3))
    with pytest.raises(ValueError, match="do not fit"):
        WeightAverage(other).load(tmp_path / "avg.safetensors")


def test_finish_average_recomputes_batch_norm_statistics():
    net = _net()
    average = WeightAverage(net)
    average.update(net)
    bn = net[1]
    bn.running_mean.fill_(100.0)  # stale statistics that do not describe the data
    torch.manual_seed(0)
    batches = [(torch.randn(4, 1, 8, 8) * 0.1 + 5.0, None) for _ in range(3)]
    out = finish_average(average, net, batches, max_batches=2)
    assert not out.training and out is not net
    assert torch.equal(net[1].running_mean, torch.full((2,), 100.0))  # the trained model is left alone
    # the recomputed mean is the conv output's channel mean over the data (~ weight sum * 5 + bias)
    with torch.no_grad():
        conv = out[0](torch.cat([b[0] for b in batches[:2]]))
    assert torch.allclose(out[1].running_mean, conv.mean(dim=(0, 2, 3)), atol=1e-4)
    with pytest.raises(ValueError, match="no weights"):
        finish_average(WeightAverage(net), net, batches)


def test_run_fraction_follows_time_budget_or_epochs():
    assert run_fraction(TrainConfig(epochs=10), 3, 999.0) == pytest.approx(0.3)
    assert run_fraction(TrainConfig(epochs=10, max_minutes=2.0), 3, 60.0) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="average_from"):
        TrainConfig(average_from=1.0)


def test_averaged_run_ships_the_mean_and_resumes(tmp_path, dsb_root):
    cfg = TrainConfig(
        data=str(dsb_root), out=str(tmp_path / "run"), val_fraction=0.01, limit_images=4, val_max_images=2,
        crop_size=64, batch_size=2, steps_per_epoch=3, epochs=3, lr=3e-3, threads=2, seed=1, amp="off",
        average_from=0.5, average_bn_batches=2, oversample=False,
    )
    cfg.model.params = {"depth": 2, "base_channels": 4}
    out = train(cfg, progress=False)
    report = json.loads((out / "report.json").read_text())
    assert report["weights"] == "average" and report["average"]["epochs"] == 2  # epochs 2 and 3 (2/3 >= 0.5)
    assert 0.0 <= report["average"]["val"]["val_score"] <= 1.0
    assert (out / "best.safetensors").is_file() and (out / AVERAGE_FILE).is_file()
    # weights.safetensors holds the mean of the averaged epochs' parameters
    shipped = load_weights(create_model("unet", 3, 3, depth=2, base_channels=4), out / "weights.safetensors")
    mean = WeightAverage(shipped).load(out / AVERAGE_FILE)
    for name, p in shipped.named_parameters():
        assert torch.allclose(p, mean.mean[name], atol=1e-6), name
    assert weights_metadata(out / "best.safetensors")["epoch"] == str(report["best_epoch"])
    assert weights_metadata(out / "weights.safetensors")["epoch"] == "average"
    card = model_card("tiny", json.loads((out / "train.json").read_text()), report, {}, "sha", trained_on="DSB")
    assert f"the weights are the average of the last 2 epochs (validation {report['average']['val']['val_score']:.4f}" in card
    # --resume continues the mean, and the best single epoch stays aside (never the mean)
    cfg.epochs = 4
    train(cfg, resume=True, progress=False)
    assert pd.read_csv(out / "metrics.csv")["epoch"].tolist() == [1, 2, 3, 4]
    report = json.loads((out / "report.json").read_text())
    assert report["average"]["epochs"] == 3
    assert weights_metadata(out / "best.safetensors")["epoch"] == str(report["best_epoch"])
    assert weights_metadata(out / "weights.safetensors")["epoch"] == "average"
