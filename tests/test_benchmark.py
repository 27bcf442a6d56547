"""The whole-pipeline benchmark: image preparation, timings per stage and the CLI."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from nucleiseg.benchmark import STAGES, fit, format_table, prepare_images, run_benchmark
from nucleiseg.config import ModelBundleConfig, ModelConfig, save_json
from nucleiseg.io.images import read_image
from nucleiseg.models import create_model
from nucleiseg.training.checkpoint import save_weights

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init U-Net run folder (no ONNX file: the benchmark exports one itself)."""
    folder = tmp_path_factory.mktemp("tiny_bench")
    torch.manual_seed(0)
    params = {"depth": 3, "base_channels": 8}
    save_weights(create_model("unet", 3, 3, **params), folder / "weights.safetensors")
    save_json(ModelBundleConfig(model=ModelConfig(arch="unet", params=params), name="tiny"), folder / "config.json")
    return folder


@pytest.fixture
def two_images(tmp_path: Path) -> Path:
    """Two small real images with ground truth."""
    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("fluo_small", "tissue_he"):
        shutil.copy(EXAMPLES / f"{name}.png", folder)
        shutil.copy(EXAMPLES / f"{name}_masks.tif", folder)
    return folder


def test_fit_crops_and_mirror_tiles() -> None:
    image = np.arange(3 * 5, dtype=np.uint8).reshape(3, 5)
    labels = np.array([[0, 1, 1, 0, 2]] * 3, np.int32)
    img, lab = fit(image, labels, 8)
    assert img.shape == lab.shape == (8, 8)
    assert np.array_equal(img[:3, :5], image) and np.array_equal(lab[:3, :5], labels)
    assert np.array_equal(img[3:6, :5], image[::-1])  # mirrored below
    assert np.array_equal(img[:3, 5:8], image[:, :1:-1])  # and to the right
    # every mirrored copy (3 rows x 2 columns of copies) gets its own ids
    assert set(np.unique(lab[3:6, :5])) == {0, 5, 6}  # copy 2 (row 1, column 0): ids + 2 * 2
    assert len(set(np.unique(lab)) - {0}) == 12
    big = np.zeros((20, 30, 3), np.uint8)
    big[5:15, 10:20] = 7
    crop, none = fit(big, None, 10)
    assert crop.shape == (10, 10, 3) and none is None and (crop == 7).all()


def test_prepare_images_writes_readable_files(two_images: Path, tmp_path: Path) -> None:
    prepared = prepare_images(two_images, [128, 300], tmp_path / "prep")
    assert sorted(prepared) == [128, 300]
    for size, items in prepared.items():
        assert [it["id"] for it in items] == ["fluo_small", "tissue_he"]
        for it in items:
            assert read_image(it["path"]).shape[:2] == (size, size)
            assert it["gt"].shape == (size, size) and it["gt"].max() > 0


def test_run_benchmark_small(tiny_model: Path, two_images: Path) -> None:
    threads = torch.get_num_threads()
    result = run_benchmark(two_images, tiny_model, backends=["torch", "onnx"], sizes=[64], tta=True, repeats=1, profile=1, threads=1)
    assert set(result) >= {"date", "model", "machine", "settings", "images", "results", "profile"}
    assert result["images"]["ids"] == ["fluo_small", "tissue_he"] and result["images"]["ground_truth"] == 2
    configs = [(r["pipeline"], r["tta"]) for r in result["results"]]
    assert configs == [("baseline", False), ("torch", False), ("onnx", False), ("torch", True), ("onnx", True)]
    for r in result["results"]:
        ms = r["ms_per_image"]
        assert set(ms) == {*STAGES, "total"}
        assert r["images_per_s"] > 0 and ms["total"] > 0 and r["peak_rss_mb"] > 0
        assert ms["read"] > 0 and ms["normalize"] > 0 and ms["watershed"] > 0 and ms["write"] > 0
        assert (ms["tta"] > 0 and ms["network"] == 0) if r["tta"] else (ms["network"] > 0 and ms["tta"] == 0)
        assert 0.0 <= r["score"] <= 1.0 and r["speedup"] > 0
        assert abs(ms["total"] - sum(ms[s] for s in STAGES)) < 0.1
    assert result["results"][0]["speedup"] == 1.0
    assert "torch@64" in result["profile"] and "ncalls" in result["profile"]["torch@64"][0]
    table = format_table(result)
    assert "onnx+tta" in table and "baseline" in table
    assert torch.get_num_threads() == threads  # restored after the run with threads=1
    assert result["machine"]["torch_threads"] == 1


def test_run_benchmark_rejects_bad_arguments(tiny_model: Path, two_images: Path) -> None:
    with pytest.raises(ValueError, match="unknown backend"):
        run_benchmark(two_images, tiny_model, backends=["tensorrt"], sizes=[64], repeats=1)
    with pytest.raises(ValueError, match="repeats"):
        run_benchmark(two_images, tiny_model, sizes=[64], repeats=0)
    with pytest.raises(ValueError, match="sizes"):
        run_benchmark(two_images, tiny_model, sizes=[0], repeats=1)


def test_benchmark_cli(tiny_model: Path, two_images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from nucleiseg.cli.benchmark import add_parser

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    out = tmp_path / "bench.json"
    args = parser.parse_args([
        "benchmark", "--images", str(two_images / "fluo_small.png"), "--model", str(tiny_model), "--backend", "onnx",
        "--sizes", "32,64", "--repeats", "1", "-o", str(out),
    ])
    assert args.func(args) == 0
    data = json.loads(out.read_text())
    assert [(r["size"], r["pipeline"]) for r in data["results"]] == [(32, "baseline"), (32, "onnx"), (64, "baseline"), (64, "onnx")]
    assert f"wrote {out}" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        parser.parse_args(["benchmark", "--sizes", "a,b"])


def test_run_benchmark_with_workers(tiny_model: Path, two_images: Path) -> None:
    """The worker-pool rows segment the same labels as the serial rows of the same pipeline."""
    result = run_benchmark(two_images, tiny_model, backends=["onnx"], sizes=[64], repeats=1, workers=2)
    rows = {(r["pipeline"], r["workers"]): r for r in result["results"]}
    assert set(rows) == {("baseline", 1), ("onnx", 1), ("onnx", 2)} and result["settings"]["workers"] == 2
    pool = rows["onnx", 2]
    assert pool["images_per_s"] > 0 and pool["peak_rss_mb"] > 0 and pool["ms_per_image"]["network"] > 0
    assert pool["score"] == rows["onnx", 1]["score"]
    assert "onnx x2" in format_table(result)
    with pytest.raises(ValueError, match="workers"):
        run_benchmark(two_images, tiny_model, sizes=[64], repeats=1, workers=0)
