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
from nucleiseg.export.onnx import export_onnx
from nucleiseg.config import ModelBundleConfig, ModelConfig, save_json
from nucleiseg.io.images import read_image
from nucleiseg.models import create_model
from nucleiseg.training.checkpoint import save_weights

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init U-Net run folder with its ONNX form."""
    folder = tmp_path_factory.mktemp("tiny_bench")
    torch.manual_seed(0)
    params = {"depth": 3, "base_channels": 8}
    save_weights(create_model("unet", 3, 3, **params), folder / "weights.safetensors")
    save_json(ModelBundleConfig(model=ModelConfig(arch="unet", params=params), name="tiny"), folder / "config.json")
    export_onnx(folder, folder / "model.onnx")
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


def test_commands_take_turns_and_pair_their_ratios(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Whole commands run round-robin; the speed-up is the median of same-round ratios."""
    from nucleiseg.benchmark import core

    order: list[str] = []
    walls = iter([4.0, 2.0, 8.0, 2.0, 4.0, 1.0])  # the machine is twice as slow in round 2

    def fake_run(cmd: list[str], out: Path, repeats: int, threads: int | None = None) -> dict:
        assert repeats == 1
        order.append(out.name)
        wall = next(walls)
        return {"seconds": wall, "runs": [wall]}

    monkeypatch.setattr(core, "run_command", fake_run)
    monkeypatch.setattr(core, "score_folder", lambda folder, out: 0.5)
    res = core._commands(tmp_path, ["baseline", "auto"], "default", tmp_path, 3, None, 10)
    assert order == ["baseline", "auto"] * 3
    assert res["auto"]["speedup_runs"] == [2.0, 4.0, 4.0] and res["auto"]["speedup"] == 4.0
    assert res["auto"]["seconds"] == 2.0 and res["auto"]["images_per_s"] == 5.0
    assert res["baseline"]["speedup"] == 1.0 and res["baseline"]["runs"] == [4.0, 8.0, 4.0]


def test_run_benchmark_times_what_users_run(tiny_model: Path, two_images: Path, tmp_path: Path) -> None:
    """In-process rows per stage and whole-command rows; the labels are those `nucleiseg segment` writes."""
    from nucleiseg.cli.main import main
    from nucleiseg.io.images import read_labels

    result = run_benchmark([two_images], tiny_model, backends=["onnx"], repeats=1, threads=1)
    assert set(result) >= {"date", "model", "machine", "settings", "sets", "rows", "one_image"}
    assert result["sets"]["images"] == {"folder": str(two_images), "images": 2, "ground_truth": 2}
    rows = {(r["mode"], r["pipeline"]): r for r in result["rows"]}
    assert set(rows) == {("segment", "baseline"), ("segment", "onnx"), ("command", "baseline"), ("command", "onnx")}
    for mode in ("segment", "command"):
        assert rows[mode, "baseline"]["speedup"] == 1.0 and rows[mode, "onnx"]["speedup"] > 0
        for pipeline in ("baseline", "onnx"):
            assert rows[mode, pipeline]["images_per_s"] > 0 and 0.0 <= rows[mode, pipeline]["score"] <= 1.0
    ms = rows["segment", "onnx"]["ms_per_image"]
    assert set(ms) == {*STAGES, "total"}, ms
    # the tiny model has no size estimator: its first native pass (and labels) is the estimate, reused
    assert all(ms[s] > 0 for s in ("read", "normalize", "estimate", "write")), ms
    assert abs(ms["total"] - sum(ms[s] for s in STAGES)) < 0.5
    assert rows["segment", "baseline"]["ms_per_image"]["estimate"] == 0
    # the in-process step scores exactly what the whole command wrote
    assert rows["segment", "onnx"]["score"] == pytest.approx(rows["command", "onnx"]["score"], abs=1e-9)
    assert rows["command", "onnx"]["seconds"] > 0 and len(rows["command", "onnx"]["runs"]) == 1
    base_wall, onnx_wall = rows["command", "baseline"]["runs"][0], rows["command", "onnx"]["runs"][0]
    assert rows["command", "onnx"]["speedup_runs"] == [round(base_wall / onnx_wall, 3)]
    assert result["one_image"]["seconds"] > 0 and result["one_image"]["pipeline"] == "onnx"
    out = tmp_path / "seg"
    assert main(["segment", str(two_images), "-o", str(out), "--model", str(tiny_model), "--backend", "onnx", "--threads", "1", "--quiet"]) == 0
    from nucleiseg.benchmark.runners import make_runner
    from nucleiseg.io.labels import discover_inputs

    run = make_runner("onnx", tiny_model, threads=1)
    (tmp_path / "bench_out").mkdir()
    for item in discover_inputs([two_images]):
        _, labels = run(item, tmp_path / "bench_out")
        assert np.array_equal(labels, read_labels(out / f"{item.id}_masks.tif"))
    table = format_table(result)
    assert "baseline" in table and "command" in table and "one 256x256 image" in table


def test_run_benchmark_rejects_bad_arguments(tiny_model: Path, two_images: Path) -> None:
    with pytest.raises(ValueError, match="unknown backend"):
        run_benchmark([two_images], tiny_model, backends=["tensorrt"], repeats=1)
    with pytest.raises(ValueError, match="repeats"):
        run_benchmark([two_images], tiny_model, repeats=0)
    with pytest.raises(ValueError, match="threads"):
        run_benchmark([two_images], tiny_model, repeats=1, threads=0)


def test_benchmark_cli_square_sets(tiny_model: Path, two_images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from nucleiseg.cli.benchmark import add_parser

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    out = tmp_path / "bench.json"
    args = parser.parse_args([
        "benchmark", "--images", str(two_images), "--model", str(tiny_model), "--backend", "onnx",
        "--sizes", "64", "--repeats", "1", "--threads", "1", "--no-command", "-o", str(out),
    ])
    assert args.func(args) == 0
    data = json.loads(out.read_text())
    assert [(r["set"], r["mode"], r["pipeline"]) for r in data["rows"]] == [
        ("images", "segment", "baseline"), ("images", "segment", "onnx"), ("64x64", "segment", "baseline"), ("64x64", "segment", "onnx"),
    ]
    assert data["one_image"] is None and data["command"].startswith("nucleiseg benchmark --model")
    assert f"wrote {out}" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        parser.parse_args(["benchmark", "--sizes", "a,b"])
