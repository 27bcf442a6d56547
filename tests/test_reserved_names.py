"""Bundled model names are reserved: no training run takes one over, on the command line or in the web app."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest

with warnings.catch_warnings():  # Starlette asks for the httpx2 fork; plain httpx still works
    warnings.filterwarnings("ignore", message=".*httpx2.*")
    from fastapi.testclient import TestClient

from nucleiseg.app.limits import AppSettings
from nucleiseg.app.server import create_app
from nucleiseg.bundle import WEIGHTS_DIR, ModelBundle, ModelSpec, reserved_names
from nucleiseg.cli.main import main as cli_main

REPO = Path(__file__).resolve().parents[1]
IMAGE = REPO / "examples" / "fluo_small.png"
RUN_FILES = ("config.json", "weights.safetensors", "model.int8.onnx", "thresholds.json")


def _fake_run(folder: Path, shown_name: str) -> Path:
    """A finished run folder: the bundled default's files under another display name."""
    folder.mkdir(parents=True)
    for name in RUN_FILES:
        shutil.copy(WEIGHTS_DIR / "default" / name, folder / name)
    config = json.loads((folder / "config.json").read_text())
    config["name"] = shown_name
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_a_bundled_name_means_the_bundled_model_beside_a_folder_of_that_name(tmp_path: Path, monkeypatch) -> None:
    _fake_run(tmp_path / "default", "impostor")
    monkeypatch.chdir(tmp_path)
    assert ModelSpec.of("default").model == "default"
    assert ModelBundle.open("default").folder == WEIGHTS_DIR / "default"
    assert ModelBundle.open("./default").name == "impostor"  # the folder, addressed as a folder


def test_cli_train_refuses_a_reserved_run_name(tmp_path: Path, capsys) -> None:
    assert set(reserved_names()) >= {"default", "classical"}
    code = cli_main(["train", "--data", str(REPO / "examples"), "--out", str(tmp_path / "Classical"), "--epochs", "1"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is the name of a bundled model" in err
    assert not (tmp_path / "Classical").exists()


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    _fake_run(runs / "classical", "taken-over")  # copied in by hand: the app cannot create it
    _fake_run(runs / "mine", "mine")
    settings = AppSettings(model="classical", data=(str(REPO / "examples"),), runs=str(runs))
    with TestClient(create_app(settings=settings)) as c:
        yield c


def _segmented_by(client, model: str) -> str:
    r = client.post("/api/segment", files={"file": (IMAGE.name, IMAGE.read_bytes())}, data={"model": model})
    assert r.status_code == 200, r.text
    return r.json()["model"].split("-onnx")[0]  # the display name, without the runtime form


def test_web_app_keeps_bundled_names_and_addresses_runs_unambiguously(client) -> None:
    available = client.get("/api/models").json()["available"]
    assert len(available) == len(set(available))
    assert "classical" in available and "run:classical" in available and "mine" in available
    assert _segmented_by(client, "classical") == "classical"
    assert _segmented_by(client, "run:classical") == "taken-over"
    assert _segmented_by(client, "mine") == _segmented_by(client, "run:mine") == "mine"
    assert client.post("/api/segment", files={"file": (IMAGE.name, IMAGE.read_bytes())}, data={"model": "run:nope"}).status_code == 404


@pytest.mark.parametrize("name", ["classical", "default", "Accurate"])
def test_web_app_refuses_a_training_run_with_a_bundled_name(client, name: str) -> None:
    r = client.post("/api/train", json={"dataset": "examples", "recipe": "tiny", "epochs": 1, "name": name})
    assert r.status_code == 409 and "bundled model" in r.json()["error"], r.text


def test_job_commands_show_no_server_paths(client) -> None:
    r = client.post("/api/evaluate-dataset", json={"dataset": "examples", "models": ["run:classical"]})
    assert r.status_code == 202, r.text
    command = r.json()["command"]
    runs = client.app.state.settings.runs
    assert "<runs>/classical" in command and runs not in command, command
    client.post(f"/api/jobs/{r.json()['id']}/stop")
