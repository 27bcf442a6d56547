"""The web app's JSON API: results on real example images, every error path, limits and the queue."""

from __future__ import annotations

import argparse
import base64
import io
import json
import tempfile
import threading
import time
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

with warnings.catch_warnings():  # Starlette asks for the httpx2 fork; plain httpx still works
    warnings.filterwarnings("ignore", message=".*httpx2.*")
    from fastapi.testclient import TestClient

from nucleiseg.app.limits import AppSettings, safe_name, sniff_kind
from nucleiseg.app.server import create_app, load_segmenter
from nucleiseg.cli import serve as serve_cli
from nucleiseg.config import ModelBundleConfig, ModelConfig, save_json
from nucleiseg.inference.segmenter import Result, Segmenter
from nucleiseg.io import read_image, read_labels
from nucleiseg.metrics import match_labels

REPO = Path(__file__).resolve().parents[1]
IMAGE = REPO / "examples" / "fluo_small.png"
MASKS = REPO / "examples" / "fluo_small_masks.tif"
OTHER_MASKS = REPO / "examples" / "tissue_he_masks.tif"  # 320 x 256: a different shape


def _decode_png(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))))


def _no_server_paths(message: str) -> None:
    assert tempfile.gettempdir() not in message and "nucleiseg-app-" not in message and str(REPO) not in message


@pytest.fixture(scope="module")
def client():
    with TestClient(create_app("classical")) as c:
        yield c


@pytest.fixture(scope="module")
def image_bytes() -> bytes:
    return IMAGE.read_bytes()


class ScriptedSegmenter(Segmenter):
    """A classical-config model whose output is given, optionally blocking until released."""

    def __init__(self, labels: np.ndarray | None = None, block: bool = False, fail: Exception | None = None) -> None:
        super().__init__(ModelBundleConfig(name="scripted"), None, name="scripted", model_hash="feedface")
        self.labels = labels
        self.fail = fail
        self.started = threading.Semaphore(0)
        self.release = threading.Event()
        if not block:
            self.release.set()

    def segment(self, image, infer=None, post=None, keep_probabilities=True) -> Result:  # noqa: ANN001
        self.started.release()
        if not self.release.wait(timeout=30):
            raise TimeoutError("test never released the scripted segmenter")
        if self.fail is not None:
            raise self.fail
        labels = self.labels if self.labels is not None else np.zeros(image.shape[:2], np.int32)
        return Result(labels, None, None, 1.0, {"total": 0.0})


# ---------------------------------------------------------------- success paths


def _app_temp_dirs() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("nucleiseg-app-*")}


def test_segment_real_image_matches_the_python_api(client, image_bytes):
    before = _app_temp_dirs()
    r = client.post("/api/segment", files={"file": ("fluo_small.png", image_bytes, "image/png")})
    assert r.status_code == 200, r.text
    assert _app_temp_dirs() <= before  # the upload's temporary folder is gone
    d = r.json()
    assert d["count"] > 0 and (d["width"], d["height"]) == (256, 256)
    assert d["model"] == "classical" and d["name"] == "fluo_small"
    labels = _decode_png(d["labels_png"])
    assert labels.shape == (256, 256) and labels.dtype == np.uint16
    assert int(labels.max()) == d["count"] == len(np.unique(labels)) - 1
    expected = Segmenter.from_pretrained("classical").segment(read_image(IMAGE)).labels
    np.testing.assert_array_equal(labels, expected)
    overlay = _decode_png(d["overlay_png"])
    assert overlay.shape == (256, 256, 3) and not np.array_equal(overlay, _decode_png(d["image_png"]))
    assert len(d["measurements"]) == d["count"]
    assert sorted(r["label"] for r in d["measurements"]) == list(range(1, d["count"] + 1))
    csv_lines = d["measurements_csv"].strip().splitlines()
    assert csv_lines[0].startswith("label,area,") and len(csv_lines) == d["count"] + 1
    areas = {row["label"]: row["area"] for row in d["measurements"]}
    assert areas[1] == float((labels == 1).sum())
    assert d["timings"]["total_server"] > 0


def test_options_reach_the_model(client, image_bytes):
    files = {"file": ("fluo_small.png", image_bytes, "image/png")}
    base = client.post("/api/segment", files=files).json()
    big = client.post("/api/segment", files=files, data={"min_size": "250", "tta": "true", "threshold": "0.3"}).json()
    assert big["settings"]["postprocess"]["min_size"] == 250
    assert big["settings"]["postprocess"]["threshold"] == 0.3
    assert big["settings"]["infer"]["tta"] is True
    assert 0 < big["count"] < base["count"]
    assert min(r["area"] for r in big["measurements"]) >= 250
    loose, strict = (
        client.post("/api/segment", files=files, data={"model": "default", "min_confidence": v}).json() for v in ("0", "0.97")
    )
    assert strict["settings"]["postprocess"]["min_confidence"] == 0.97
    assert 0 < strict["count"] < loose["count"]


def test_segment_zip_holds_every_output(client, image_bytes):
    r = client.post("/api/segment?format=zip", files={"file": ("my image.png", image_bytes, "image/png")})
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    assert 'filename="my_image_nucleiseg.zip"' in r.headers["content-disposition"]
    with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
        names = set(zf.namelist())
        assert names == {"my_image_masks.tif", "my_image_overlay.png", "my_image_measurements.csv", "my_image.geojson", "run.json"}
        labels = tifffile.imread(io.BytesIO(zf.read("my_image_masks.tif")))
        run = json.loads(zf.read("run.json"))
        csv = zf.read("my_image_measurements.csv").decode().strip().splitlines()
    assert labels.shape == (256, 256) and run["count"] == int(labels.max()) == len(csv) - 1 > 0
    assert run["model"] == "classical" and "versions" in run


def test_evaluate_against_label_image(client, image_bytes):
    files = {"file": ("fluo_small.png", image_bytes, "image/png"), "gt": ("fluo_small_masks.tif", MASKS.read_bytes())}
    r = client.post("/api/evaluate", files=files)
    assert r.status_code == 200, r.text
    d = r.json()
    assert 0 < d["competition_score"] <= 1 and 0 < d["ap50"] <= 1 and 0 < d["f1"] <= 1 and 0 < d["pq"] <= 1
    truth = read_labels(MASKS)
    pred = Segmenter.from_pretrained("classical").segment(read_image(IMAGE)).labels
    m = match_labels(truth, pred)
    assert d["competition_score"] == pytest.approx(m.competition_score, abs=1e-4)
    assert (d["tp"], d["fp"], d["fn"]) == (m.tp50, m.fp50, m.fn50)
    assert d["n_true"] == len(np.unique(truth)) - 1 and d["tp"] + d["fn"] == d["n_true"]
    assert [row["threshold"] for row in d["per_threshold"]] == pytest.approx(list(np.arange(0.5, 1.0, 0.05)))
    assert _decode_png(d["diff_png"]).shape == (256, 256, 3)


def test_evaluate_mask_zip_equals_label_image(client, image_bytes):
    truth = read_labels(MASKS)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for k in np.unique(truth)[1:]:
            png = io.BytesIO()
            Image.fromarray(((truth == k) * 255).astype(np.uint8)).save(png, format="PNG")
            zf.writestr(f"masks/nucleus_{k:03d}.png", png.getvalue())
    files = {"file": ("fluo_small.png", image_bytes, "image/png"), "gt_zip": ("masks.zip", buf.getvalue())}
    from_zip = client.post("/api/evaluate", files=files).json()
    files = {"file": ("fluo_small.png", image_bytes, "image/png"), "gt": ("m.tif", MASKS.read_bytes())}
    from_tif = client.post("/api/evaluate", files=files).json()
    assert from_zip["n_true"] == from_tif["n_true"]
    assert from_zip["competition_score"] == from_tif["competition_score"]


def test_evaluate_ground_truth_against_itself_scores_one(image_bytes):
    truth = read_labels(MASKS)
    with TestClient(create_app(segmenter=ScriptedSegmenter(labels=truth))) as c:
        files = {"file": ("fluo_small.png", image_bytes, "image/png"), "gt": ("m.tif", MASKS.read_bytes())}
        d = c.post("/api/evaluate", files=files).json()
    assert d["competition_score"] == 1.0 and d["ap50"] == 1.0 and d["fp"] == d["fn"] == 0
    assert d["model"] == "scripted" and d["model_hash"] == "feedface"


def test_health_and_models(client):
    h = client.get("/api/health").json()
    assert h["status"] == "ok" and h["model_loaded"] and h["model"] == "classical"
    assert h["limits"] == {"max_upload_bytes": 32 * 1024 * 1024, "max_pixels": 64_000_000, "max_concurrency": 2, "max_queue": 8}
    m = client.get("/api/models").json()
    assert m["loaded"]["name"] == "classical" and "classical" in m["available"]


def test_page_and_static_files_are_local(client):
    r = client.get("/")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    assert "script-src 'self'" in r.headers["content-security-policy"]
    texts = [r.text] + [client.get(f"/static/{n}").text for n in ("app.js", "style.css")]
    assert all(t for t in texts)
    for text in texts:
        assert "http://" not in text and "https://" not in text  # no CDN, nothing remote
    assert 'data-testid="overlay-img"' in r.text and "/static/app.js" in r.text
    assert client.get("/api/docs").status_code == 404  # FastAPI's docs page would load a CDN
    assert "/api/segment" in client.get("/api/openapi.json").json()["paths"]


def test_default_model_falls_back_to_classical(monkeypatch, tmp_path, caplog):
    monkeypatch.setattr("nucleiseg.bundle.WEIGHTS_DIR", tmp_path)
    with caplog.at_level("WARNING", logger="nucleiseg.app"):
        seg = load_segmenter("default")
    assert seg.is_classical and "classical" in caplog.text
    with pytest.raises(FileNotFoundError, match="no model there"):
        load_segmenter(tmp_path / "missing")


def test_trained_model_folder_is_served(tmp_path, image_bytes):
    from nucleiseg.models import create_model
    from nucleiseg.training.checkpoint import save_weights

    params = {"depth": 3, "base_channels": 8}
    save_weights(create_model("unet", 3, 3, **params), tmp_path / "weights.safetensors")
    save_json(ModelBundleConfig(model=ModelConfig(arch="unet", params=params), name="tiny"), tmp_path / "config.json")
    with TestClient(create_app(tmp_path)) as c:
        d = c.post("/api/segment", files={"file": ("f.png", image_bytes, "image/png")}).json()
        assert d["model"] == "tiny" and len(d["model_hash"]) >= 16
        assert _decode_png(d["labels_png"]).shape == (256, 256)
        assert c.get("/api/models").json()["loaded"]["arch"] == "unet"


# ---------------------------------------------------------------- error paths


@pytest.mark.parametrize(
    ("files", "data", "status", "words"),
    [
        ({"file": ("empty.png", b"")}, {}, 422, "is empty"),
        ({"file": ("notes.png", b"just some text, not pixels\n" * 4)}, {}, 415, "not a PNG, TIFF, JPEG or BMP"),
        ({"file": ("archive.png", b"PK\x03\x04rest")}, {}, 415, "not a PNG"),
        ({"file": ("cut.png", "TRUNCATED")}, {}, 422, "cannot decode PNG"),
        ({}, {"tta": "true"}, 422, "missing form field 'file'"),
        ({"file": ("f.png", "IMAGE")}, {"threshold": "2"}, 422, "threshold"),
        ({"file": ("f.png", "IMAGE")}, {"threshold": "nan"}, 422, "threshold"),
        ({"file": ("f.png", "IMAGE")}, {"min_size": "-1"}, 422, "min_size"),
        ({"file": ("f.png", "IMAGE")}, {"min_size": "ten"}, 422, "min_size"),
        ({"file": ("f.png", "IMAGE")}, {"min_confidence": "1.5"}, 422, "min_confidence"),
        ({"file": ("f.png", "IMAGE")}, {"tta": "maybe"}, 422, "tta"),
        ({"file": ("f.png", "IMAGE")}, {"diameter": "-1"}, 422, "diameter"),  # 0 means "estimate it"
        ({"file": ("f.png", "IMAGE")}, {"diameter": "8um"}, 422, "needs the pixel size"),
        ({"file": ("f.png", "IMAGE")}, {"pixel_size": "0"}, 422, "pixel_size"),
    ],
)
def test_segment_bad_input(client, image_bytes, files, data, status, words):
    content = {"TRUNCATED": image_bytes[: len(image_bytes) // 3], "IMAGE": image_bytes}
    files = {k: (name, content.get(body, body)) for k, (name, body) in files.items()}
    r = client.post("/api/segment", files=files or None, data=data)
    assert r.status_code == status, r.text
    assert set(r.json()) == {"error"} and words in r.json()["error"]
    _no_server_paths(r.json()["error"])


def test_bad_format_and_unknown_route(client, image_bytes):
    r = client.post("/api/segment?format=tar", files={"file": ("f.png", image_bytes)})
    assert r.status_code == 422 and "format" in r.json()["error"]
    assert client.get("/api/nothing").status_code == 404 and "error" in client.get("/api/nothing").json()


@pytest.mark.parametrize(
    ("extra", "status", "words"),
    [
        ({}, 422, "exactly one of 'gt'"),
        ({"gt": ("m.tif", "MASKS"), "gt_zip": ("m.zip", b"PK\x03\x04")}, 422, "exactly one of 'gt'"),
        ({"gt": ("other.tif", "OTHER")}, 422, "has shape (256, 320), the image has shape (256, 256)"),
        ({"gt": ("m.tif", b"II*\x00broken tiff")}, 422, "gt 'm'"),
        ({"gt_zip": ("m.zip", "MASKS")}, 415, "not a ZIP"),
        ({"gt_zip": ("m.zip", b"PK\x03\x04 not really a zip")}, 422, "not a readable ZIP"),
        ({"gt_zip": ("m.zip", "EMPTYZIP")}, 422, "holds no PNG, TIFF or BMP mask images"),
    ],
)
def test_evaluate_bad_ground_truth(client, image_bytes, extra, status, words):
    empty_zip = io.BytesIO()
    with zipfile.ZipFile(empty_zip, "w") as zf:
        zf.writestr("readme.txt", "no masks here")
    content = {"MASKS": MASKS.read_bytes(), "OTHER": OTHER_MASKS.read_bytes(), "EMPTYZIP": empty_zip.getvalue()}
    files = {"file": ("fluo_small.png", image_bytes)}
    files.update({k: (name, content.get(body, body)) for k, (name, body) in extra.items()})
    r = client.post("/api/evaluate", files=files)
    assert r.status_code == status, r.text
    assert words in r.json()["error"]
    _no_server_paths(r.json()["error"])


def test_upload_and_pixel_caps(image_bytes):
    small = AppSettings(max_upload_bytes=1000)
    with TestClient(create_app("classical", small)) as c:
        # Within the multipart slack but over the file cap: counted while reading the file.
        r = c.post("/api/segment", files={"file": ("f.png", image_bytes[:1500])})
        assert r.status_code == 413 and "larger than the upload limit of 1000 bytes" in r.json()["error"]
        # Far over: refused on Content-Length before the body is read.
        r = c.post("/api/segment", files={"file": ("f.png", image_bytes * 3)})
        assert r.status_code == 413 and "request body is larger" in r.json()["error"]

        # No Content-Length (chunked): the middleware counts the bytes as they arrive.
        def chunks():
            for _ in range(100):
                yield b"x" * 4096

        r = c.post("/api/segment", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"})
        assert r.status_code == 413 and "request body is larger" in r.json()["error"]
    with TestClient(create_app("classical", AppSettings(max_pixels=256 * 255))) as c:
        r = c.post("/api/segment", files={"file": ("f.png", image_bytes)})
        assert r.status_code == 413 and "65536 pixels, more than the limit of 65280" in r.json()["error"]
        assert c.post("/api/evaluate", files={"file": ("f.png", image_bytes), "gt": ("m.tif", MASKS.read_bytes())}).status_code == 413


def test_queue_full_gives_503_and_nothing_is_lost(image_bytes):
    seg = ScriptedSegmenter(block=True)
    settings = AppSettings(max_concurrency=1, max_queue=1)
    with TestClient(create_app(settings=settings, segmenter=seg)) as c:
        answers: list[int] = []

        def send() -> None:
            answers.append(c.post("/api/segment", files={"file": ("f.png", image_bytes)}).status_code)

        workers = [threading.Thread(target=send) for _ in range(2)]
        workers[0].start()
        assert seg.started.acquire(timeout=10)  # first request is running
        workers[1].start()
        deadline = time.monotonic() + 10
        while c.get("/api/health").json()["in_flight"] < 2:  # second one is waiting for the worker
            assert time.monotonic() < deadline, "second request never queued"
            time.sleep(0.02)
        assert c.get("/api/health").json()["waiting"] == 1
        r = c.post("/api/segment", files={"file": ("f.png", image_bytes)})
        assert r.status_code == 503 and "server busy" in r.json()["error"]
        seg.release.set()
        for w in workers:
            w.join(timeout=30)
        assert answers == [200, 200]
        assert c.get("/api/health").json()["in_flight"] == 0


def test_internal_error_is_json_without_details(image_bytes):
    seg = ScriptedSegmenter(fail=RuntimeError("exploded in /srv/secret/model.py"))
    with TestClient(create_app(segmenter=seg), raise_server_exceptions=False) as c:
        r = c.post("/api/segment", files={"file": ("f.png", image_bytes)})
    assert r.status_code == 500 and r.json() == {"error": "internal error (RuntimeError); see the server log"}


# ---------------------------------------------------------------- helpers and CLI


def test_names_and_sniffing():
    assert safe_name("../../etc/passwd.png") == "passwd"
    assert safe_name("C:\\Users\\x\\my scan (1).tif") == "my_scan_1"
    assert safe_name("", "gt") == "gt" and safe_name(".png") == "png"
    assert sniff_kind(IMAGE.read_bytes()[:16]) == "png" and sniff_kind(MASKS.read_bytes()[:16]) == "tiff"
    assert sniff_kind(b"GIF89a") is None
    with pytest.raises(ValueError, match="max_queue"):
        AppSettings(max_queue=-1)


def test_serve_parser_and_bad_model(capsys):
    parser = argparse.ArgumentParser()
    serve_cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["serve"])
    assert (args.host, args.port, args.model, args.max_queue, args.max_pixels) == ("127.0.0.1", 8000, "default", 8, 64_000_000)
    assert args.func is serve_cli.cmd_serve
    args = parser.parse_args(["serve", "--port", "9001", "--max-upload-mb", "2", "--model", "classical", "--max-queue", "0"])
    assert (args.port, args.max_upload_mb, args.model, args.max_queue) == (9001, 2.0, "classical", 0)
    assert serve_cli.main(["--model", "/nonexistent/run", "--port", "9"]) == 2
    assert "no model there" in capsys.readouterr().err
    assert serve_cli.main(["--port", "70000"]) == 2
