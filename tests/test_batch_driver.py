"""The one batch driver: serial, worker processes and Dask give the same files, CSV and run.json."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from nucleiseg.bundle import ModelSpec
from nucleiseg.inference.batch import segment_items
from nucleiseg.io.images import read_labels, write_labels
from nucleiseg.io.labels import InputItem, discover_inputs
from nucleiseg.io.layout import OutputLayout, OutputOptions

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
NAMES = ("fluo_small", "tissue_dense", "tissue_he")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, make_tiny_run) -> Path:
    """A random U-Net model folder with ``model.onnx`` and ``model.int8.onnx``; ~15 % foreground."""
    return make_tiny_run(tmp_path_factory.mktemp("tiny_run"), int8=True)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Three real example images and one broken file (sorted first)."""
    src = tmp_path / "in"
    src.mkdir()
    for name in NAMES:
        shutil.copy(EXAMPLES / f"{name}.png", src)
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    return src


@pytest.fixture(scope="module")
def client():
    """An in-process Dask cluster with two single-threaded workers."""
    from distributed import Client

    with Client(processes=False, n_workers=2, threads_per_worker=1, dashboard_address=None) as c:
        yield c


@pytest.fixture
def torch_threads():
    """Restore PyTorch's thread count (a spec with ``threads`` sets it process-wide)."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _comparable(run: dict) -> dict:
    """run.json without what legitimately differs between executors and runs (timings, schedule)."""
    run = {k: v for k, v in run.items() if k not in ("executor", "skipped", "versions")}
    run["images"] = [{k: v for k, v in r.items() if k not in ("seconds", "timings")} for r in run["images"]]
    run["summary"] = {k: v for k, v in run["summary"].items() if k not in ("seconds", "resumed")}
    return run


def _intra_op_threads(segmenter) -> int:
    return segmenter.predictor.session.get_session_options().intra_op_num_threads


@pytest.mark.parametrize("backend", ["torch", "onnx", "onnx-int8"])
def test_executors_and_resume_agree(backend, tiny_run, folder, tmp_path, client, torch_threads) -> None:
    from nucleiseg.distributed import workers

    items = discover_inputs([folder])
    assert [i.id for i in items] == ["broken", *NAMES]
    spec = ModelSpec.of(tiny_run, backend, "cpu", 1)
    outs = {kind: tmp_path / kind for kind in ("serial", "processes", "dask")}

    def options(kind: str) -> OutputOptions:
        return OutputOptions(measure=True, rle=str(outs[kind] / "labels.csv"))

    serial = segment_items(items, outs["serial"], spec, options("serial"), executor="serial", progress=False)
    procs = segment_items(items, outs["processes"], spec, options("processes"), workers=2, progress=False)
    # Half the batch, then all of it resumed on Dask: one run's CSV and records.
    half = segment_items(items[:2], outs["dask"], spec, options("dask"), progress=False)
    dask = segment_items(items, outs["dask"], spec, options("dask"), client=client, resume=True, progress=False)

    assert serial.images[0]["count"] > 5 and [r["id"] for r in serial.images] == list(NAMES)
    assert [f["id"] for f in serial.failures] == ["broken"] and "broken.png" in serial.failures[0]["error"]
    assert dask.skipped == ["fluo_small"] and procs.skipped == []
    runs = {kind: json.loads((out / "run.json").read_text()) for kind, out in outs.items()}
    assert [runs[k]["executor"]["kind"] for k in outs] == ["serial", "processes", "dask"]
    assert runs["processes"]["executor"] == {"kind": "processes", "workers": 2, "threads": 1}
    assert _comparable(runs["processes"]) == _comparable(runs["serial"]) == _comparable(runs["dask"])
    assert dask.images[0] == half.images[0]  # the resumed image keeps its record
    csv = (outs["serial"] / "labels.csv").read_text()
    assert csv.count("fluo_small") > 5 and csv.count("tissue_he") > 0
    assert (outs["processes"] / "labels.csv").read_text() == csv == (outs["dask"] / "labels.csv").read_text()
    for name in NAMES:
        ref = read_labels(outs["serial"] / f"{name}_masks.tif")
        for kind in ("processes", "dask"):
            np.testing.assert_array_equal(read_labels(outs[kind] / f"{name}_masks.tif"), ref)
            assert (outs[kind] / f"{name}_measurements.csv").read_text() == (outs["serial"] / f"{name}_measurements.csv").read_text()
    # The Dask workers loaded the spec's backend with its threads (not PyTorch by name).
    loaded = [seg for (key, _), seg in workers._CACHE.items() if key == spec]
    assert len(loaded) == 1 and loaded[0].source == spec and loaded[0].backend == backend
    if backend.startswith("onnx"):
        assert type(loaded[0].predictor).__name__ == "OrtPredictor" and _intra_op_threads(loaded[0]) == 1
        assert loaded[0].predictor.path.name == ("model.int8.onnx" if backend == "onnx-int8" else "model.onnx")
    else:
        assert type(loaded[0].predictor).__name__ != "OrtPredictor"


def test_cli_threads_reach_onnx_runtime_and_bad_file_fails_alone(tiny_run, folder, tmp_path, monkeypatch, capsys) -> None:
    from nucleiseg.cli.main import main
    from nucleiseg.inference import item

    loaded = []
    original = item.load_segmenter
    monkeypatch.setattr(item, "load_segmenter", lambda spec: loaded.append(original(spec)) or loaded[-1])
    out = tmp_path / "out"
    code = main(["segment", str(folder), "-o", str(out), "--model", str(tiny_run), "--backend", "onnx",
                 "--threads", "1", "--quiet", "--rle", str(out / "s.csv")])
    captured = capsys.readouterr()
    assert code == 1 and "3 images segmented" in captured.out and "1 failed" in captured.out
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {folder / 'broken.png'}: ")
    assert len(loaded) == 1 and _intra_op_threads(loaded[0]) == 1
    run = json.loads((out / "run.json").read_text())
    assert run["model"] == "tiny-onnx-fp32" and [f["id"] for f in run["failures"]] == ["broken"]
    assert all((out / f"{name}_masks.tif").is_file() for name in NAMES) and not (out / "broken_masks.tif").exists()
    assert len(json.loads((out / "run.json").read_text())["images"]) == 3


def test_layout_names_every_output_and_knows_what_is_done(tmp_path: Path) -> None:
    layout = OutputLayout.of(tmp_path, OutputOptions(png=True, overlay=True, measure=True, rois=True, geojson=True))
    assert layout.expected("a") == ["a_masks.tif", "a_masks.png", "a_overlay.png", "a_measurements.csv", "a.geojson", "a_rois.zip"]
    assert layout.expected("a", stack=True) == ["a_masks.tif", "a_overlay.tif", "a_measurements.csv", "a.geojson", "a_rois.zip"]
    assert OutputLayout.of(tmp_path, blockwise=True).expected("a") == ["a_masks.zarr"]
    items = [InputItem("a", tmp_path / "a.png", None, None), InputItem("s", tmp_path / "s.tif", None, None)]
    stack = OutputLayout.of(tmp_path, OutputOptions(overlay=True))
    for name in ("a_masks.tif", "a_overlay.png", "s_masks.tif"):
        write_labels(tmp_path / name, np.ones((4, 4), np.uint16))
    assert stack.pending(items) == [items[1]]
    write_labels(tmp_path / "s_overlay.tif", np.ones((4, 4), np.uint16))  # a stack's overlay
    assert stack.pending(items) == []
    assert layout.pending(items) == items  # more outputs asked for: nothing is done
    (tmp_path / "a_masks.zarr").mkdir()
    (tmp_path / "a_masks.zarr" / ".zarray").write_text("{}")
    assert OutputLayout.of(tmp_path, blockwise=True).pending(items) == [items[1]]
    with pytest.raises(KeyError, match="known"):
        layout.name("a", "thumbnail")


def test_versions_do_not_import_torch() -> None:
    code = ("import sys; from nucleiseg.inference.record import versions; v = versions(); "
            "assert 'torch' in v and 'numpy' in v and 'scikit-image' in v, v; "
            "assert 'torch' not in sys.modules and 'onnxruntime' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
