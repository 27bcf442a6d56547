"""Dataset endpoints of the web app: listing with the inspect summary, and hostile ZIP uploads."""

from __future__ import annotations

import argparse
import io
import shutil
import stat
import warnings
import zipfile
from pathlib import Path

import pytest

with warnings.catch_warnings():  # Starlette asks for the httpx2 fork; plain httpx still works
    warnings.filterwarnings("ignore", message=".*httpx2.*")
    from fastapi.testclient import TestClient

from nucleiseg.app.limits import AppSettings
from nucleiseg.app.server import create_app
from nucleiseg.cli import serve as serve_cli
from nucleiseg.io.survey import survey

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def client(runs, tmp_path_factory):
    small = tmp_path_factory.mktemp("small")
    for name in ("fluo_small.png", "fluo_small_masks.tif", "tissue_he.png", "tissue_he_masks.tif"):
        shutil.copy(EXAMPLES / name, small / name)
    settings = AppSettings(model="classical", data=(str(small),), runs=str(runs), max_dataset_files=6,
                           max_dataset_bytes=4 * 1024 * 1024, max_dataset_unpacked_bytes=8 * 1024 * 1024)
    with TestClient(create_app(settings=settings)) as c:
        yield c


def _zip(entries: list[tuple[str | zipfile.ZipInfo, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries:
            zf.writestr(name, data)
    return buf.getvalue()


def _good_entries() -> list[tuple[str, bytes]]:
    return [(f"set/{n}", (EXAMPLES / n).read_bytes()) for n in ("fluo_small.png", "fluo_small_masks.tif", "tissue_dense.png", "tissue_dense_masks.tif")]


def _leftovers(runs: Path) -> set[str]:
    root = runs / ".datasets"
    return {p.name for p in root.iterdir()} if root.is_dir() else set()


def test_server_dataset_is_listed_with_its_inspect_summary(client):
    listing = client.get("/api/datasets").json()
    names = [d["name"] for d in listing["datasets"]]
    assert names[0].startswith("small") and listing["uploads"] is True
    name = names[0]
    d = client.get(f"/api/datasets/{name}").json()
    _, expected, grid = survey(EXAMPLES, progress=False)  # the same images, as `nucleiseg inspect` sees them
    assert d["summary"]["images"] == 2 and d["summary"]["images_with_masks"] == 2
    assert d["summary"]["nuclei"] == client.app.state.app.datasets.get(name).summary["nuclei"] > 0
    assert set(d["summary"]) >= set(expected)
    assert len(d["thumbnails"]) == 2
    png = client.get(d["thumbnails"][0])
    assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert client.get(f"/api/datasets/{name}/thumbs/9.png").status_code == 404
    r = client.get("/api/datasets/nope")
    assert r.status_code == 404 and "no dataset named 'nope'" in r.json()["error"]


def test_good_zip_becomes_a_dataset(client, runs):
    r = client.post("/api/datasets", files={"file": ("my set.zip", _zip(_good_entries()))})
    assert r.status_code == 201, r.text
    d = r.json()
    assert d["source"] == "upload" and d["summary"]["images"] == 2 and d["summary"]["images_with_masks"] == 2
    assert d["name"] in [x["name"] for x in client.get("/api/datasets").json()["datasets"]]
    assert d["name"] in _leftovers(runs) and not any(n.startswith(".upload-") for n in _leftovers(runs))
    with TestClient(create_app(settings=client.app.state.settings)) as again:  # uploads survive a restart
        assert d["name"] in [x["name"] for x in again.get("/api/datasets").json()["datasets"]]


def test_serve_options_for_datasets_and_runs(tmp_path):
    parser = argparse.ArgumentParser()
    serve_cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["serve", "--data", str(EXAMPLES), "--data", str(tmp_path), "--runs", str(tmp_path / "runs")])
    assert args.data == [str(EXAMPLES), str(tmp_path)] and args.runs == str(tmp_path / "runs")
    assert serve_cli.main(["--data", str(tmp_path / "missing"), "--model", "classical"]) == 2


def _symlink_entry() -> zipfile.ZipInfo:
    info = zipfile.ZipInfo("set/link.png")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


@pytest.mark.parametrize(
    ("entries", "status", "phrase"),
    [
        ([("../evil.png", (EXAMPLES / "fluo_small.png").read_bytes())], 422, "leaves the folder"),
        ([("set/../../evil.png", b"x")], 422, "leaves the folder"),
        ([("/abs/evil.png", b"x")], 422, "absolute path"),
        ([("set\\evil.png", b"x")], 422, "backslash"),
        ([(_symlink_entry(), b"/etc/passwd")], 422, "symbolic link"),
        ([("bomb.png", b"\0" * (6 * 1024 * 1024))], 413, "zip bomb"),
        ([("big.png", b"\0" * (20 * 1024 * 1024))], 413, "unpacks to more than 8 MB"),
        ([(f"set/{k}.png", (EXAMPLES / "fluo_small.png").read_bytes()) for k in range(7)], 413, "more than 6 files"),
        (_good_entries() + [("set/notes.txt", b"hello, these are my notes\n")], 415, "notes.txt is not a PNG"),
        ([("set/fake.png", b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)], 415, "cannot be read as an image"),
    ],
    ids=["dotdot", "nested-dotdot", "absolute", "backslash", "symlink", "bomb", "total-size", "too-many", "non-image", "fake-png"],
)
def test_hostile_zips_are_refused_and_leave_nothing(client, runs, entries, status, phrase):
    before = _leftovers(runs)
    r = client.post("/api/datasets", files={"file": ("hostile.zip", _zip(entries))})
    assert r.status_code == status, r.text
    assert phrase in r.json()["error"] and set(r.json()) == {"error"}
    assert _leftovers(runs) == before
    assert not (runs / "evil.png").exists() and not (runs.parent / "evil.png").exists()


def test_upload_size_and_type_limits(client, runs):
    before = _leftovers(runs)
    r = client.post("/api/datasets", files={"file": ("big.zip", b"PK\x03\x04" + b"\0" * (5 * 1024 * 1024))})
    assert r.status_code == 413 and "larger than" in r.json()["error"]
    r = client.post("/api/datasets", files={"file": ("x.zip", (EXAMPLES / "fluo_small.png").read_bytes())})
    assert r.status_code == 415 and "not a ZIP" in r.json()["error"]
    r = client.post("/api/datasets", files={"file": ("x.zip", b"PK\x03\x04 definitely not a zip")})
    assert r.status_code == 422 and "not a readable ZIP" in r.json()["error"]
    r = client.post("/api/datasets", files={"file": ("masks.zip", _zip([("a_masks.tif", (EXAMPLES / "fluo_small_masks.tif").read_bytes())]))})
    assert r.status_code == 422 and "no input images" in r.json()["error"]
    assert _leftovers(runs) == before
