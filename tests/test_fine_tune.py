"""Fine-tuning from a bundled model or a run (``nucleiseg train --from``), training folders of any
ground-truth layout, and the structured progress file."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from nucleiseg.cli.main import main as cli_main
from nucleiseg.training.folders import MIN_TRAIN_IMAGES, choose_split, labelled_items, training_split
from nucleiseg.training.progress import ProgressLog, read_progress, summarize_progress

#: A fine-tune of seconds: tiny crops, two steps an epoch, a budget of a few seconds.
TINY = ["--max-minutes", "0.02", "--crop-size", "64", "--batch-size", "2", "--steps-per-epoch", "2", "--threads", "1",
        "--quiet"]


def _disk_image(make_disks, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = [(float(y), float(x)) for y, x in rng.uniform(10, 86, size=(8, 2))]
    labels = make_disks((96, 96), centers, 6)
    image = (20 + 180 * (labels > 0) + rng.normal(0, 8, labels.shape)).clip(0, 255).astype(np.uint8)
    return image, labels


def write_layout(root: Path, layout: str, make_disks, n: int = 3) -> Path:
    """A tiny labelled data set in ``layout``; returns what ``--data`` should name."""
    for k in range(n):
        image, labels = _disk_image(make_disks, k)
        name = f"img{k}"
        if layout == "dsb":
            (root / name / "images").mkdir(parents=True)
            (root / name / "masks").mkdir()
            Image.fromarray(image).save(root / name / "images" / f"{name}.png")
            for j in range(1, labels.max() + 1):
                Image.fromarray(((labels == j) * 255).astype(np.uint8)).save(root / name / "masks" / f"m{j}.png")
        elif layout == "images_masks":
            (root / "images").mkdir(parents=True, exist_ok=True)
            (root / "masks").mkdir(exist_ok=True)
            Image.fromarray(image).save(root / "images" / f"{name}.png")
            tifffile.imwrite(root / "masks" / f"{name}.tif", labels)
        else:  # cellpose pairs; "single" keeps only the first
            root.mkdir(parents=True, exist_ok=True)
            tifffile.imwrite(root / f"{name}.tif", image)
            tifffile.imwrite(root / f"{name}_masks.tif", labels)
    return root / "img0.tif" if layout == "single" else root


def test_progress_file_round_trip(tmp_path):
    log = ProgressLog(tmp_path / "progress.jsonl", interval_s=3600)
    log.write("start", epochs=5, max_minutes=1.0, n_train=2, n_val=2, val_on_train=True)
    log.step(epoch=1, step=1, steps=4, loss=0.9, elapsed_s=1.0)
    log.step(epoch=1, step=2, steps=4, loss=0.8, elapsed_s=2.0)  # within interval_s: not written
    log.write("epoch", epoch=1, train_loss=0.7, val_score=0.4, seconds=3.0)
    with open(tmp_path / "progress.jsonl", "a") as fh:
        fh.write('{"event": "step", "epo')  # a line being written
    events = read_progress(tmp_path / "progress.jsonl")
    assert [e["event"] for e in events] == ["start", "step", "epoch"]
    state = summarize_progress(events)
    assert state["phase"] == "training" and state["epoch"] == 1 and state["epoch_fraction"] == 1.0
    assert state["history"][0]["val_score"] == 0.4 and state["val_on_train"] is True
    assert summarize_progress(events + [{"event": "end"}])["phase"] == "finished"
    assert read_progress(tmp_path / "missing.jsonl") == []


def test_split_holds_out_only_when_enough_images_remain():
    few = [f"i{k}" for k in range(MIN_TRAIN_IMAGES)]
    assert choose_split(few, 0.2, 0) == (sorted(few), sorted(few), True)
    many = [f"i{k}" for k in range(10)]
    train, val, on_train = choose_split(many, 0.2, 0)
    assert not on_train and len(val) == 2 and not set(train) & set(val) and len(train) == 8
    assert choose_split(many, 0.0, 0)[2] is True


@pytest.mark.parametrize("layout", ["dsb", "images_masks", "cellpose", "single"])
def test_every_ground_truth_layout_is_training_data(tmp_path, make_disks, layout):
    data = write_layout(tmp_path / layout, layout, make_disks)
    split = training_split(data, 0.2, 0)
    assert len(split.train) == (1 if layout == "single" else 3) and split.val_on_train
    from nucleiseg.config import NormalizeConfig

    samples = split.load(split.train, NormalizeConfig(), progress=False)
    assert all(s.labels.max() == 8 for s in samples)


def test_measuring_only_data_is_refused(tmp_path, make_disks):
    data = write_layout(tmp_path / "monuseg_copy", "cellpose", make_disks)
    with pytest.raises(ValueError, match="measuring only"):
        labelled_items(data)
    link = tmp_path / "innocent"
    link.mkdir()
    (link / "img0.tif").symlink_to(data / "img0.tif")
    (link / "img0_masks.tif").symlink_to(data / "img0_masks.tif")
    with pytest.raises(ValueError, match="measuring only"):
        labelled_items(link)
    assert labelled_items(data, allow_measuring_only=True)


@pytest.mark.parametrize("layout", ["dsb", "images_masks", "cellpose", "single"])
def test_cli_fine_tunes_the_default_on_each_layout(tmp_path, make_disks, layout, capsys):
    data = write_layout(tmp_path / "data", layout, make_disks)
    recipe = tmp_path / "ft.yaml"
    recipe.write_text("export: false\n")
    out = tmp_path / "runs" / "ft"
    rc = cli_main(["train", "--from", "default", "--data", str(data), "--out", str(out), "--config", str(recipe), *TINY])
    assert rc == 0
    assert "fine-tuned from default" in capsys.readouterr().out
    record = json.loads((out / "fine_tune.json").read_text())
    assert record["parent"] == "default" and len(record["parent_sha256"]) == 64
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert evaluation["val_on_train"] and {"parent", "native_default", "native_tuned"} <= set(evaluation)
    from nucleiseg.bundle import ModelBundle

    config, default = ModelBundle.open(out).config, ModelBundle.open("default").config
    assert config.model == default.model and config.normalize == default.normalize and config.targets == default.targets
    assert config.infer == default.infer and (out / "size_model.json").is_file()
    assert "Fine-tuned from `default`" in (out / "MODEL_CARD.md").read_text()
    events = [e["event"] for e in read_progress(out / "progress.jsonl")]
    assert events[0] == "start" and "epoch" in events and "end" in events and events[-1] == "phase"


def test_fine_tuned_run_is_a_model_for_segment(tmp_path, make_disks):
    data = write_layout(tmp_path / "data", "cellpose", make_disks)
    out = tmp_path / "ft"
    assert cli_main(["train", "--from", "default", "--data", str(data), "--out", str(out), *TINY]) == 0
    assert (out / "model.int8.onnx").is_file() and (out / "thresholds.json").is_file()
    seg_out = tmp_path / "seg"
    assert cli_main(["segment", str(data / "img1.tif"), "--model", str(out), "--out", str(seg_out)]) == 0
    masks = tifffile.imread(seg_out / "img1_masks.tif")
    assert masks.shape == (96, 96)


def test_fine_tune_accurate_then_fine_tune_the_run(tmp_path, make_disks):
    """``--from accurate`` (the ensemble, trained as one model) gives a run; ``--from`` that run fine-tunes it again."""
    data = write_layout(tmp_path / "data", "cellpose", make_disks)
    recipe = tmp_path / "ft.yaml"
    recipe.write_text("export: false\n")
    first, second = tmp_path / "acc", tmp_path / "acc2"
    assert cli_main(["train", "--from", "accurate", "--data", str(data), "--out", str(first), "--config", str(recipe), *TINY]) == 0
    from nucleiseg.bundle import ModelBundle

    assert ModelBundle.open(first).config.model == ModelBundle.open("accurate").config.model
    args = ["train", "--from", str(first), "--data", str(data), "--out", str(second), "--config", str(recipe), "--epochs", "1", *TINY]
    assert cli_main(args) == 0
    record = json.loads((second / "fine_tune.json").read_text())
    assert record["parent"] == str(first) and record["recipe"]["epochs"] == 1
    assert "1-epoch budget" in (second / "MODEL_CARD.md").read_text()
    assert [e["epoch"] for e in read_progress(second / "progress.jsonl") if e["event"] == "epoch"] == [1]
    seg = ["segment", str(data / "img1.tif"), "--model", str(second), "--backend", "torch", "--out", str(tmp_path / "seg"), "--quiet"]
    assert cli_main(seg) == 0
    assert tifffile.imread(tmp_path / "seg" / "img1_masks.tif").shape == (96, 96)


def test_training_from_scratch_reads_any_layout(tmp_path, make_disks):
    data = write_layout(tmp_path / "data", "images_masks", make_disks)
    out = tmp_path / "scratch"
    args = ["train", "--data", str(data), "--out", str(out), "--epochs", "1", "--steps-per-epoch", "1", "--crop-size", "64",
            "--batch-size", "2", "--threads", "1", "--quiet"]
    assert cli_main(args) == 0
    split = json.loads((out / "split.json").read_text())
    assert split["val_on_train"] and split["train"] == ["img0", "img1", "img2"]
    assert [e["event"] for e in read_progress(out / "progress.jsonl")] == ["start", "step", "epoch", "end"]


def test_fine_tune_refusals_are_one_line_errors(tmp_path, make_disks, capsys):
    data = write_layout(tmp_path / "data", "cellpose", make_disks)
    assert cli_main(["train", "--from", "classical", "--data", str(data), "--out", str(tmp_path / "a"), *TINY]) == 2
    assert "no weights to fine-tune" in capsys.readouterr().err
    assert cli_main(["train", "--from", "default", "--data", str(data), "--optimizer", "sgd", "--out", str(tmp_path / "b")]) == 2
    assert "--optimizer: not with --from" in capsys.readouterr().err
    assert cli_main(["train", "--from", "default", "--out", str(tmp_path / "c")]) == 2
    assert "--from needs --data" in capsys.readouterr().err
    assert cli_main(["train", "--from", "default", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "d")]) == 2
    assert "no such file or folder" in capsys.readouterr().err


def test_web_app_fine_tunes_by_default_and_compares_with_the_parent(tmp_path):
    import warnings

    with warnings.catch_warnings():  # Starlette asks for the httpx2 fork; plain httpx still works
        warnings.filterwarnings("ignore", message=".*httpx2.*")
        from fastapi.testclient import TestClient

    from nucleiseg.app.limits import AppSettings
    from nucleiseg.app.server import create_app

    examples = Path(__file__).resolve().parents[1] / "examples"
    settings = AppSettings(model="classical", data=(str(examples),), runs=str(tmp_path / "runs"))
    with TestClient(create_app(settings=settings)) as client:
        assert "scratch" in client.get("/api/recipes").json()["start_from"]
        bad = client.post("/api/train", json={"dataset": "examples", "start_from": "nope", "minutes": 1})
        assert bad.status_code == 404 and "start_from" in bad.json()["error"]
        r = client.post("/api/train", json={"dataset": "examples", "minutes": 0.01, "name": "ft"})
        assert r.status_code == 202
        job = r.json()
        # The shown command is the real one: what the child ran, with the server's folder names.
        assert job["command"].startswith(f"nucleiseg train --from default --data {examples} --max-minutes 0.01 --out ")
        seen_training = False
        deadline = time.monotonic() + 600
        while job["state"] not in ("finished", "failed", "stopped"):
            assert time.monotonic() < deadline, job
            time.sleep(0.2)
            job = client.get(f"/api/jobs/{job['id']}").json()
            seen_training |= job["progress"].get("phase") == "training" and "epoch" in job["progress"]
        assert job["state"] == "finished", job.get("error")
        assert seen_training and job["progress"]["history"] and job["progress"]["history"][0]["epoch"] == 1
        ev = job["result"]["evaluation"]
        assert ev["parent"]["model"] == "default" and 0 <= ev["native_tuned"]["val_score"] <= 1
        assert ev["n_images"] == 1 and not ev["val_on_train"]  # 5 examples: 4 train, 1 held out
        runs = client.get("/api/runs").json()["runs"]
        assert [r["name"] for r in runs] == ["ft"]
        assert "ft" in client.get("/api/models").json()["available"]  # selectable as a model
        card = client.get("/api/runs/ft").json()["model_card"]
        assert "Fine-tuned from `default`" in card
        # Performance: the fine-tuned run beside its parent, on the image held out of its training only.
        refused = client.post("/api/evaluate-dataset", json={"dataset": "examples", "models": ["default"], "held_out": True})
        assert refused.status_code == 422 and "held_out" in refused.json()["error"]
        r = client.post("/api/evaluate-dataset", json={"dataset": "examples", "models": ["ft", "default"], "held_out": True})
        assert r.status_code == 202
        evaluation = r.json()
        while evaluation["state"] not in ("finished", "failed"):
            time.sleep(0.2)
            evaluation = client.get(f"/api/jobs/{evaluation['id']}").json()
        assert evaluation["state"] == "finished", evaluation.get("error")
        held_out = json.loads((tmp_path / "runs" / "ft" / "split.json").read_text())["val"]
        assert [row["id"] for row in evaluation["result"]["images"]] == held_out and len(held_out) == 1
        scores = [m["summary"]["score_macro"] for m in evaluation["result"]["models"]]
        assert all(0 <= x <= 1 for x in scores)


@pytest.mark.filterwarnings("ignore:`json_encoders` is deprecated:DeprecationWarning",
                            "ignore:System theme detection requires a Qt6 backend:UserWarning")
@pytest.mark.skipif(not __import__("os").environ.get("DISPLAY"), reason="needs an X display: run under xvfb-run")
def test_napari_widget_trains_on_corrections_and_offers_the_run(tmp_path, make_disks, monkeypatch):
    pytest.importorskip("napari")
    import napari
    from qtpy.QtWidgets import QApplication

    from nucleiseg.inference.segmenter import Segmenter

    monkeypatch.setenv("NUCLEISEG_RUNS", str(tmp_path / "runs"))
    viewer = napari.Viewer(show=False)
    try:
        for k in range(2):
            image, labels = _disk_image(make_disks, k)
            viewer.add_image(image, name=f"cells{k}")
            viewer.add_labels(labels, name=f"cells{k} nuclei")
        _, widget = viewer.window.add_plugin_dock_widget("nucleiseg", "Train on these corrections")
        assert set(widget._pairs.value) == {"cells0 ← cells0 nuclei", "cells1 ← cells1 nuclei"}
        assert widget._from.value == "default"
        widget.extra_args = [*TINY[2:], "--config", str(tmp_path / "ft.yaml")]
        (tmp_path / "ft.yaml").write_text("export: false\n")
        widget._minutes.value, widget._name.value = 0.02, "corrected"
        worker = widget.start()
        assert worker is not None
        deadline = time.monotonic() + 600
        while widget.last_run is None and time.monotonic() < deadline and "failed" not in widget._status.value:
            QApplication.processEvents()  # the viewer stays responsive while the child trains
            time.sleep(0.05)
        assert widget.last_run == tmp_path / "runs" / "corrected", widget._status.value
        assert "is a model now" in widget._status.value
        assert str(tmp_path / "runs" / "corrected") in widget._from.choices  # selectable as a model
        assert sorted(p.name for p in (tmp_path / "runs" / ".data" / "corrected").iterdir()) == [
            "cells0.tif", "cells0_masks.tif", "cells1.tif", "cells1_masks.tif"]
        seg = Segmenter.from_pretrained(widget.last_run)
        assert seg.segment(_disk_image(make_disks, 5)[0]).labels.shape == (96, 96)
    finally:
        viewer.close()
        QApplication.processEvents()
