"""Training and dataset-evaluation jobs of the web app, through the JSON API.

One module-wide app trains the built-in ``tiny`` recipe on the bundled examples (a few seconds a
run) in a child process: start, live progress over Server-Sent Events, the queue, stop, the
validated run in the model list, and clear failures. Dataset evaluation must give exactly what
``nucleiseg evaluate`` gives on the same predictions.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

with warnings.catch_warnings():  # Starlette asks for the httpx2 fork; plain httpx still works
    warnings.filterwarnings("ignore", message=".*httpx2.*")
    from fastapi.testclient import TestClient

from nucleiseg.app.limits import AppSettings
from nucleiseg.app.server import create_app, load_segmenter
from nucleiseg.cli.main import main as cli_main
from nucleiseg.io import read_image
from nucleiseg.io.images import write_labels
from nucleiseg.io.labels import discover_inputs

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
IMAGE = EXAMPLES / "fluo_small.png"


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("jobs")
    unlabelled = root / "unlabelled"
    unlabelled.mkdir()
    shutil.copy(IMAGE, unlabelled / "a.png")
    shutil.copy(EXAMPLES / "tissue_he.png", unlabelled / "b.png")
    broken = root / "broken"  # DSB layout whose masks do not fit their images: the trainer fails
    for k in range(3):
        (broken / f"s{k}" / "images").mkdir(parents=True)
        (broken / f"s{k}" / "masks").mkdir()
        Image.fromarray(np.full((40, 40), 90, np.uint8)).save(broken / f"s{k}" / "images" / f"s{k}.png")
        Image.fromarray(np.full((20, 20), 255, np.uint8)).save(broken / f"s{k}" / "masks" / "m.png")
    return {"runs": root / "runs", "unlabelled": unlabelled, "broken": broken}


@pytest.fixture(scope="module")
def client(folders):
    settings = AppSettings(model="classical", data=(str(EXAMPLES), str(folders["unlabelled"]), str(folders["broken"])),
                           runs=str(folders["runs"]))
    with TestClient(create_app(settings=settings)) as c:
        yield c


def _events(client, job_id: str) -> list[dict]:
    """Every ``update`` event of a job's stream, until its ``end`` event."""
    updates = []
    with client.stream("GET", f"/api/jobs/{job_id}/events") as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        event = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event == "update":
                updates.append(json.loads(line[6:]))
            elif event == "end":
                break
    return updates


def _wait(client, job_id: str, predicate, timeout: float = 90) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/api/jobs/{job_id}").json()
        if predicate(job):
            return job
        assert time.monotonic() < deadline, f"timed out waiting for {job_id}: {job}"
        time.sleep(0.2)


def _segment_seconds(client, n: int = 5) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        r = client.post("/api/segment", files={"file": (IMAGE.name, IMAGE.read_bytes())})
        times.append(time.perf_counter() - t0)
        assert r.status_code == 200
    return statistics.median(times)


def test_bad_datasets_fail_with_a_clear_error(client):
    r = client.post("/api/train", json={"dataset": "unlabelled", "recipe": "tiny", "start_from": "scratch", "arch": "unet", "minutes": 1})
    assert r.status_code == 202
    job = _wait(client, r.json()["id"], lambda j: j["state"] in ("failed", "finished"))
    assert job["state"] == "failed" and "0 image(s) with ground-truth masks" in job["error"]
    r = client.post("/api/train", json={"dataset": "broken", "recipe": "tiny", "start_from": "scratch", "arch": "unet", "minutes": 1, "name": "broken-run"})
    job = _wait(client, r.json()["id"], lambda j: j["state"] in ("failed", "finished"))
    assert job["state"] == "failed" and job["error"].startswith("training failed: ") and "mask shape" in job["error"]
    assert str(REPO) not in job["error"] and "broken-run" not in [x["name"] for x in client.get("/api/runs").json()["runs"]]
    for body, status, phrase in [
        ({"dataset": "nope", "recipe": "tiny"}, 404, "no dataset named"),
        ({"dataset": "examples", "recipe": "nope"}, 404, "no recipe named"),
        ({"dataset": "examples", "arch": "vgg"}, 422, "unknown architecture"),
        ({"dataset": "examples", "minutes": -1}, 422, "minutes"),
        ({"dataset": "examples", "name": "../x"}, 422, "name"),
    ]:
        r = client.post("/api/train", json=body)
        assert r.status_code == status and phrase in r.json()["error"], r.text


def test_training_lifecycle_queue_stop_and_latency(client):
    idle = _segment_seconds(client)
    first = client.post("/api/train", json={"dataset": "examples", "recipe": "tiny", "start_from": "scratch", "arch": "unet", "minutes": 2, "epochs": 3, "name": "t1"})
    second = client.post("/api/train", json={"dataset": "examples", "recipe": "tiny", "start_from": "scratch", "arch": "unet", "minutes": 2, "epochs": 500, "name": "t2"})
    assert first.status_code == second.status_code == 202
    assert "nucleiseg train --config" in first.json()["command"] and "nucleiseg validate" in first.json()["command"]
    queued = client.get(f"/api/jobs/{second.json()['id']}").json()
    assert queued["state"] == "queued" and queued["progress"]["queue_position"] == 1
    assert client.post("/api/train", json={"dataset": "examples", "name": "t2"}).status_code == 409

    updates = _events(client, first.json()["id"])  # live progress over Server-Sent Events
    lengths = [len(u["progress"].get("history", [])) for u in updates]
    assert lengths[-1] == 3 and lengths == sorted(lengths) and len(set(lengths) & {1, 2}) >= 1  # the curve grew live
    assert any(u["progress"].get("phase") == "validating" for u in updates)
    done = client.get(f"/api/jobs/{first.json()['id']}").json()
    assert done["state"] == "finished" and done["result"]["run"] == "t1", done
    assert done["result"]["evaluation"]["native_tuned"]["val_score"] is not None

    runs = client.get("/api/runs").json()["runs"]
    assert [r["name"] for r in runs] == ["t1"] and runs[0]["arch"] == "unet" and runs[0]["dataset"] == "examples"
    card = client.get("/api/runs/t1").json()
    assert card["model_card"].startswith("# Model card: `t1`") and len(card["history"]) == 3
    assert "t1" in client.get("/api/models").json()["available"]
    r = client.post("/api/segment", files={"file": (IMAGE.name, IMAGE.read_bytes())}, data={"model": "t1"})
    assert r.status_code == 200 and r.json()["model"] == "t1"
    assert client.post("/api/segment", files={"file": (IMAGE.name, IMAGE.read_bytes())}, data={"model": "zz"}).status_code == 404

    job2 = _wait(client, second.json()["id"], lambda j: len(j["progress"].get("history", [])) >= 1)
    assert job2["state"] == "running" and job2["progress"]["eta_s"] >= 0
    busy = _segment_seconds(client)  # the server still answers while the child trains
    assert busy <= 3 * max(idle, 0.05), (idle, busy)
    client.post(f"/api/jobs/{second.json()['id']}/stop")
    job2 = _wait(client, second.json()["id"], lambda j: j["state"] in ("stopped", "failed", "finished"))
    assert job2["state"] == "stopped" and job2["result"]["run"] == "t2", job2  # validated after the stop
    assert {r["name"]: r["state"] for r in client.get("/api/runs").json()["runs"]} == {"t1": "finished", "t2": "stopped"}
    assert "Validation" in client.get("/api/runs/t2").json()["model_card"]
    # A restarted server lists the finished runs of its --runs folder again and serves them.
    with TestClient(create_app(settings=client.app.state.settings)) as again:
        assert {r["name"] for r in again.get("/api/runs").json()["runs"]} == {"t1", "t2"}
        r = again.post("/api/segment", files={"file": (IMAGE.name, IMAGE.read_bytes())}, data={"model": "t2"})
        assert r.status_code == 200 and r.json()["model"] == "t2"


def test_evaluate_dataset_equals_the_cli(client, tmp_path):
    r = client.post("/api/evaluate-dataset", json={"dataset": "examples", "models": ["classical"]})
    assert r.status_code == 202 and "nucleiseg evaluate --gt" in r.json()["command"]
    job = _wait(client, r.json()["id"], lambda j: j["state"] in ("finished", "failed"))
    assert job["state"] == "finished", job
    progress = job["progress"]  # the page counts the images of the model running (model_index), not all steps
    assert progress["model_index"] == 0 and progress["images"] == progress["total"] == len(discover_inputs([EXAMPLES]))
    # The same predictions through the command line: segment, then `nucleiseg evaluate`.
    segmenter = load_segmenter("classical")
    for item in discover_inputs([EXAMPLES]):
        write_labels(tmp_path / "pred" / f"{item.id}_masks.tif", segmenter.segment(read_image(item.image_path)).labels)
    assert cli_main(["evaluate", "--gt", str(EXAMPLES), "--pred", str(tmp_path / "pred"), "-o", str(tmp_path / "out")]) == 0
    expected = json.loads((tmp_path / "out" / "summary.json").read_text())["summary"]
    got = job["result"]["models"][0]
    for key in ("score_macro", "ap50", "f1_50", "tp50", "fp50", "fn50"):
        assert got["summary"][key] == pytest.approx(expected[key], abs=1e-5), key
    assert [p["score"] for p in got["per_threshold"]] == pytest.approx(list(expected["score_macro_per_threshold"].values()), abs=1e-5)
    per_image = {row["id"]: row["score"] for row in csv.DictReader(io.StringIO((tmp_path / "out" / "per_image.csv").read_text()))}
    assert {row["id"]: row["models"][0]["score"] for row in job["result"]["images"]} == pytest.approx(
        {k: float(v) for k, v in per_image.items()}, abs=1e-5)

    table = client.get(f"/api/jobs/{job['id']}/table.csv")
    rows = list(csv.reader(io.StringIO(table.text)))
    assert rows[0][:2] == ["id", "classical:score"] and len(rows) == 1 + len(per_image)
    scores = [float(row[1]) for row in rows[1:]]
    assert scores == sorted(scores)  # worst first
    diff = client.get(f"/api/jobs/{job['id']}/images/1/diff.png?model=0")
    image_id = job["result"]["images"][1]["id"]
    assert diff.status_code == 200
    assert Image.open(io.BytesIO(diff.content)).size == read_image(EXAMPLES / f"{image_id}.png").shape[1::-1]
    assert client.get(f"/api/jobs/{job['id']}/images/0/thumb.png").content[:4] == b"\x89PNG"
    assert client.get(f"/api/jobs/{job['id']}/images/99/diff.png").status_code == 404


def test_evaluation_can_be_cancelled_and_checks_its_input(client):
    r = client.post("/api/evaluate-dataset", json={"dataset": "examples", "models": ["classical", "classical"]})
    client.post(f"/api/jobs/{r.json()['id']}/stop")
    job = _wait(client, r.json()["id"], lambda j: j["state"] in ("cancelled", "stopped", "finished", "failed"))
    assert job["state"] in ("cancelled", "stopped") and job["result"] is None
    assert client.get(f"/api/jobs/{job['id']}/table.csv").status_code == 409
    for body, status in [({"dataset": "examples", "models": []}, 422), ({"dataset": "examples", "models": ["a", "b", "c"]}, 422),
                         ({"dataset": "examples", "models": ["nope"]}, 404), ({"dataset": "nope", "models": ["classical"]}, 404)]:
        assert client.post("/api/evaluate-dataset", json=body).status_code == status
    r = client.post("/api/evaluate-dataset", json={"dataset": "unlabelled", "models": ["classical"]})
    job = _wait(client, r.json()["id"], lambda j: j["state"] in ("failed", "finished"))
    assert job["state"] == "failed" and "no images with ground truth" in job["error"]
    assert client.get("/api/jobs/nope").status_code == 404
