"""Training engine: split, checkpoints, a short real run, resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from nucleiseg.config import TrainConfig
from nucleiseg.inference.segmenter import Segmenter
from nucleiseg.models import create_model
from nucleiseg.training import file_hash, load_weights, save_weights, split_ids, train
from nucleiseg.training.bundle import bundle_run
from nucleiseg.training.evaluate import evaluate_run
from nucleiseg.training.checkpoint import load_training_state, save_training_state
from nucleiseg.training.optim import autocast_dtype, cpu_supports_bf16

REPO = Path(__file__).resolve().parents[1]


def test_split_is_fixed_and_disjoint():
    ids = [f"img{i:03d}" for i in range(200)]
    tr, va = split_ids(ids, 0.1, 7)
    assert len(va) == 20 and len(tr) == 180 and not set(tr) & set(va)
    assert split_ids(list(reversed(ids)), 0.1, 7) == (tr, va)
    # adding two images moves at most two existing validation images (the split is hash-ranked)
    _, va2 = split_ids(ids + ["extra1", "extra2"], 0.1, 7)
    assert len(set(va) - set(va2)) <= 2
    assert split_ids(ids, 0.1, 8)[1] != va


def test_training_state_round_trip(tmp_path):
    model = create_model("unet", 3, 3, depth=3, base_channels=8)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=5)
    x = torch.randn(2, 3, 32, 32)
    model(x).mean().backward()
    opt.step()
    sched.step()
    save_training_state(tmp_path / "last.safetensors", model, opt, sched, {"epoch": 1, "history": []})
    model2 = create_model("unet", 3, 3, depth=3, base_channels=8)
    opt2 = torch.optim.Adam(model2.parameters(), lr=1e-3)
    sched2 = torch.optim.lr_scheduler.CosineAnnealingLR(opt2, T_max=5)
    info = load_training_state(tmp_path / "last.safetensors", model2, opt2, sched2)
    assert info["epoch"] == 1
    assert sched2.last_epoch == sched.last_epoch
    for a, b in zip(model.state_dict().values(), model2.state_dict().values()):
        assert torch.equal(a, b)
    s1, s2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert all(torch.equal(s1[k]["exp_avg"], s2[k]["exp_avg"]) for k in s1)
    assert all(float(s1[k]["step"]) == float(s2[k]["step"]) for k in s1)


def test_autocast_dtype_choices():
    assert autocast_dtype("off", "cpu") is None and autocast_dtype("off", "cuda") is None
    assert autocast_dtype("bf16", "cpu") is torch.bfloat16
    assert autocast_dtype("auto", "cuda") is torch.bfloat16
    assert autocast_dtype("auto", "cpu") is (torch.bfloat16 if cpu_supports_bf16() else None)
    with pytest.raises(ValueError, match="unknown amp"):
        autocast_dtype("fp8", "cpu")


def test_weights_mismatch_is_a_clear_error(tmp_path):
    save_weights(create_model("unet", 3, 3, depth=3, base_channels=8), tmp_path / "w.safetensors")
    with pytest.raises(ValueError, match="do not fit"):
        load_weights(create_model("unet", 3, 1, depth=3, base_channels=8), tmp_path / "w.safetensors")


@pytest.mark.slow
def test_short_real_training_run(tmp_path, dsb_root):
    cfg = TrainConfig(
        data=str(dsb_root), out=str(tmp_path / "run"), val_fraction=0.01, limit_images=6, val_max_images=2,
        crop_size=96, batch_size=4, steps_per_epoch=8, epochs=3, lr=3e-3, patience=10, threads=2, seed=1,
    )
    cfg.model.params = {"depth": 3, "base_channels": 8}
    out = train(cfg, progress=False)
    for name in ["config.json", "train.json", "split.json", "weights.safetensors", "last.safetensors",
                 "metrics.csv", "curves.png", "report.json"]:
        assert (out / name).is_file(), name
    metrics = pd.read_csv(out / "metrics.csv")
    assert len(metrics) == 3
    report = json.loads((out / "report.json").read_text())
    assert report["autocast"] == ("bfloat16" if cpu_supports_bf16() else "off")  # amp="auto"
    assert metrics["train_loss"].iloc[-1] < metrics["train_loss"].iloc[0]
    assert metrics["val_score"].between(0, 1).all()
    split = json.loads((out / "split.json").read_text())
    assert len(split["val"]) == 7 and not set(split["val"]) & set(split["train"])  # ceil(1% of 664)
    # the run folder loads as a segmenter and produces labels
    seg = Segmenter.from_pretrained(out)
    image = np.zeros((40, 50, 3), np.uint8)
    assert seg.segment(image).labels.shape == (40, 50)
    # resume continues from the last epoch without repeating it
    cfg.epochs = 4
    train(cfg, resume=True, progress=False)
    assert pd.read_csv(out / "metrics.csv")["epoch"].tolist() == [1, 2, 3, 4]
    # validation with tuning writes thresholds the segmenter then loads; bundling ships it all
    results = evaluate_run(out, dsb_root, tune=True, tta=False, pipeline=True, max_images=2, progress=False)
    assert {"native_default", "native_tuned", "pipeline"} <= set(results)
    assert results["native_tuned"]["val_score"] >= results["native_default"]["val_score"] - 1e-9
    tuned = json.loads((out / "thresholds.json").read_text())
    assert Segmenter.from_pretrained(out).config.postprocess.threshold == tuned["threshold"]
    examples = tmp_path / "ex"
    examples.mkdir()
    for name in ("fluo_small.png", "fluo_small_masks.tif"):
        shutil.copy(REPO / "examples" / name, examples)
    stale = tmp_path / "weights" / "tiny" / "model.int8.onnx"  # an earlier model's export under the same name
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"not this model")
    bundled = bundle_run(out, "tiny", examples=examples, dest_root=tmp_path / "weights")
    assert not stale.exists()  # never reused: the reference outputs below come from this model's files
    assert (bundled / "MODEL_CARD.md").read_text().count(file_hash(bundled / "weights.safetensors")) == 1
    reference = json.loads((bundled / "reference.json").read_text())["examples"]["fluo_small"]
    assert set(reference) == {"count", "score"} and 0 <= reference["score"] <= 1


def test_canonical_scale_samples_and_bundle(real_sample_dirs, dsb_root):
    """``train_diameter`` rescales each image and its labels to one nucleus size, and the bundle
    config then always rescales at inference."""
    from nucleiseg.config import NormalizeConfig
    from nucleiseg.postprocess import estimate_diameter
    from nucleiseg.training.data import load_samples
    from nucleiseg.training.rundata import bundle_config

    ids = [d.name for d in real_sample_dirs]
    native = load_samples(dsb_root, ids, NormalizeConfig(), progress=False)
    scaled = load_samples(dsb_root, ids, NormalizeConfig(), progress=False, diameter=18.0)
    for a, b in zip(native, scaled, strict=True):
        d = estimate_diameter(a.labels)
        assert b.image.shape[:2] == b.labels.shape and b.image.dtype == np.float16
        assert abs(b.image.shape[0] - a.image.shape[0] * min(4.0, max(0.25, 18.0 / d))) <= 1
        assert abs(estimate_diameter(b.labels) - 18.0) < 0.15 * 18.0 or not 0.25 < 18.0 / d < 4.0
        assert set(np.unique(b.labels)) <= set(np.unique(a.labels))  # nearest neighbour: no new ids
    infer = bundle_config(TrainConfig(train_diameter=20.0)).infer
    assert infer.rescale and infer.target_diameter == 20.0 and infer.rescale_tolerance == 1.1
    assert bundle_config(TrainConfig()).infer.rescale_tolerance == 1.5


def test_cpu_bf16_check_follows_the_cpu_flags():
    # emulated bfloat16 (plain AVX512) must not count: it trains ~2.5x slower than float32
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert cpu_supports_bf16() is bool(native)


def test_init_weights_fine_tunes_from_a_bundled_model(tmp_path, dsb_root):
    from nucleiseg.training.trainer import init_weights_file

    assert init_weights_file("default") == REPO / "src" / "nucleiseg" / "weights" / "default" / "weights.safetensors"
    with pytest.raises(FileNotFoundError):
        init_weights_file(str(tmp_path / "missing.safetensors"))
    cfg = TrainConfig(
        data=str(dsb_root), out=str(tmp_path / "run"), val_fraction=0.01, limit_images=4, val_max_images=2,
        crop_size=96, batch_size=2, steps_per_epoch=1, epochs=1, lr=1e-7, threads=2, seed=1, amp="off",
        init_weights="default",
    )
    cfg.model.params = {"depth": 4, "base_channels": 16}
    out = train(cfg, progress=False)
    start = load_weights(create_model("unet", 3, 3, depth=4, base_channels=16), init_weights_file("default"))
    tuned = load_weights(create_model("unet", 3, 3, depth=4, base_channels=16), out / "weights.safetensors")
    # one Adam step at lr 1e-7 leaves the parameters where they started (not a fresh initialisation;
    # batch-norm running statistics, buffers, do move in training mode)
    for a, b in zip(start.parameters(), tuned.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    report = json.loads((out / "report.json").read_text())
    assert report["init_weights"] == {"source": "default", "sha256": file_hash(init_weights_file("default"))}
    cfg.model.params = {"depth": 3, "base_channels": 8}
    with pytest.raises(ValueError, match="do not fit"):
        train(TrainConfig(**{**cfg.__dict__, "out": str(tmp_path / "bad")}), progress=False)


def test_workers_change_speed_not_data(real_sample_dirs, dsb_root):
    """``workers`` loads images on threads and makes crops in worker processes; both give exactly
    what one thread gives (crops come from streams keyed on seed, epoch and index)."""
    import cv2

    from nucleiseg.config import AugmentConfig, NormalizeConfig, TargetConfig
    from nucleiseg.training.data import CropDataset, crop_loader, load_samples

    ids = [d.name for d in real_sample_dirs]
    one = load_samples(dsb_root, ids, NormalizeConfig(), progress=False)
    threaded = load_samples(dsb_root, ids, NormalizeConfig(), progress=False, workers=2)
    assert [s.id for s in threaded] == ids
    for a, b in zip(one, threaded, strict=True):
        assert np.array_equal(a.image, b.image) and np.array_equal(a.labels, b.labels)
    dataset = CropDataset(one, 64, TargetConfig(), AugmentConfig(), length=8, gap_weight=5.0, oversample=False, seed=3)
    dataset.set_epoch(2)
    cv2.setNumThreads(2)
    cv2.warpAffine(np.zeros((512, 512), np.float32), np.eye(2, 3), (512, 512))  # OpenCV's pool running before the fork
    batches = [[t.clone() for t in next(iter(crop_loader(dataset, 4, workers=n, timeout=60)))] for n in (0, 2)]
    for a, b in zip(*batches, strict=True):
        assert torch.equal(a, b)
    dataset.set_epoch(3)
    assert not torch.equal(next(iter(crop_loader(dataset, 4)))[0], batches[0][0])


def test_bundle_command_line_has_help(capsys):
    from nucleiseg.training.bundle import main

    with pytest.raises(SystemExit) as stop:
        main(["--help"])
    assert stop.value.code == 0
    assert "run_dir" in capsys.readouterr().out
    with pytest.raises(SystemExit) as stop:
        main([])
    assert stop.value.code == 2
