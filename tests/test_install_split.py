"""The core install segments without PyTorch: every inference path runs with torch, albumentations,
OpenCV and the onnx package made impossible to import, and the paths that need them say which extra to install.

The block is a ``sitecustomize`` module on ``PYTHONPATH`` of the child process, so it acts before
anything is imported, as in a virtual environment where the ``[train]`` extra was never installed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tifffile

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"

BLOCKER = '''
import sys

class _NoTrainExtra:
    BLOCKED = {"torch", "albumentations", "albucore", "cv2", "onnx"}

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, _NoTrainExtra())
'''


@pytest.fixture(scope="module")
def no_torch_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment of a child process in which the [train] extra's packages cannot be imported."""
    folder = tmp_path_factory.mktemp("no_train_extra")
    (folder / "sitecustomize.py").write_text(BLOCKER)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(folder), str(REPO / "src"), env.get("PYTHONPATH", "")])
    return env


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """``python -m nucleiseg.cli.main ARGS`` in ``env``."""
    return subprocess.run([sys.executable, "-m", "nucleiseg.cli.main", *args], env=env, capture_output=True,
                          text=True, timeout=300, cwd=REPO)


def test_blocker_blocks(no_torch_env):
    for module in ("torch", "onnx", "cv2"):
        probe = subprocess.run([sys.executable, "-c", f"import {module}"], env=no_torch_env, capture_output=True, text=True)
        assert probe.returncode != 0 and f"No module named '{module}'" in probe.stderr


def test_segment_evaluate_inspect_without_torch(no_torch_env, tmp_path):
    out = tmp_path / "out"
    done = run(no_torch_env, "segment", str(EXAMPLES), "-o", str(out), "--quiet", "--overlay", "--measure",
               "--geojson", "--rois", "--rle", str(out / "sub.csv"))
    assert done.returncode == 0, done.stderr
    assert "5 images segmented" in done.stdout and "0 failed" in done.stdout
    for name in ("fluo_small", "brightfield", "tissue_he"):
        assert tifffile.imread(out / f"{name}_masks.tif").max() > 5
        for suffix in ("_overlay.png", "_measurements.csv", ".geojson", "_rois.zip"):
            assert (out / f"{name}{suffix}").is_file()
    scored = run(no_torch_env, "evaluate", "--gt", str(EXAMPLES), "--pred", str(out), "-o", str(tmp_path / "ev"))
    assert scored.returncode == 0, scored.stderr
    assert (tmp_path / "ev" / "summary.json").is_file()
    surveyed = run(no_torch_env, "inspect", str(EXAMPLES))
    assert surveyed.returncode == 0 and '"images"' in surveyed.stdout


@pytest.mark.parametrize("model", ["accurate", str(REPO / "src" / "nucleiseg" / "weights" / "default" / "model.int8.onnx")])
def test_ensemble_with_tta_and_a_lone_onnx_file_without_torch(no_torch_env, tmp_path, model):
    done = run(no_torch_env, "segment", str(EXAMPLES / "fluo_small.png"), "-o", str(tmp_path), "--quiet",
               "--model", model, "--tta")
    assert done.returncode == 0, done.stderr
    assert tifffile.imread(tmp_path / "fluo_small_masks.tif").max() > 5


def test_dask_without_torch(no_torch_env, tmp_path):
    pytest.importorskip("distributed")
    done = run(no_torch_env, "segment", str(EXAMPLES / "fluo_small.png"), str(EXAMPLES / "tissue_he.png"), "-o",
               str(tmp_path), "--quiet", "--dask", "local:1")
    assert done.returncode == 0, done.stderr
    assert "2 images segmented" in done.stdout


@pytest.mark.parametrize("args", [
    ("train", "--data", str(EXAMPLES), "--out", "{tmp}/run"),
    ("segment", str(EXAMPLES / "fluo_small.png"), "-o", "{tmp}/seg", "--backend", "torch"),
    ("export", "default", "-o", "{tmp}/m.onnx"),
])
def test_torch_paths_name_the_extra(no_torch_env, tmp_path, args):
    done = run(no_torch_env, *(a.replace("{tmp}", str(tmp_path)) for a in args))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'nucleiseg[train]'" in lines[0], done.stderr
    assert "Traceback" not in done.stderr


def test_cuda_device_without_torch_is_one_line(no_torch_env, tmp_path):
    done = run(no_torch_env, "segment", str(EXAMPLES / "fluo_small.png"), "-o", str(tmp_path), "--device", "cuda")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: --device cuda needs PyTorch, which is not installed: pip install 'nucleiseg[train]' "
        "(with a GPU build of PyTorch), or drop --device to run on the CPU"
    ]
    assert not any(tmp_path.iterdir())


def test_check_device_messages(monkeypatch):
    import torch

    from nucleiseg.devices import DeviceError, check_device

    assert check_device("cpu") == "cpu"
    with pytest.raises(DeviceError, match="unknown device 'gpu'"):
        check_device("gpu")
    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.raises(DeviceError, match=r"this PyTorch \(.*\) has no CUDA"):
        check_device("cuda")
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(DeviceError, match="no CUDA device found"):
        check_device("cuda:0")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert check_device("cuda:1") == "cuda:1"
    with pytest.raises(DeviceError, match=r"CUDA device 2 does not exist \(2 found"):
        check_device("cuda:2")


def test_train_with_cuda_on_cpu_torch_is_one_line(tmp_path):
    import torch

    if torch.version.cuda is not None:
        pytest.skip("this PyTorch has CUDA")
    done = subprocess.run([sys.executable, "-m", "nucleiseg.cli.main", "train", "--data", str(EXAMPLES), "--out",
                           str(tmp_path / "run"), "--device", "cuda"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("error: this PyTorch")
    assert "Traceback" not in done.stderr and not (tmp_path / "run").exists()


APP_SCRIPT = '''
import json, sys
from fastapi.testclient import TestClient
from nucleiseg.app.server import create_app
with TestClient(create_app()) as client:
    seg = client.post("/api/segment", files={"file": ("a.png", open(sys.argv[1], "rb"), "image/png")})
    recipes = client.get("/api/recipes")
    train = client.post("/api/train", json={"dataset": "x", "recipe": "tiny"})
    print(json.dumps({"segment": [seg.status_code, seg.json().get("count")], "recipes": [recipes.status_code, recipes.json()],
                      "train": [train.status_code, train.json()], "torch": "torch" in sys.modules}))
'''


def test_web_app_without_torch_segments_and_says_training_needs_the_extra(no_torch_env):
    pytest.importorskip("fastapi")
    done = subprocess.run([sys.executable, "-c", APP_SCRIPT, str(EXAMPLES / "fluo_small.png")], env=no_torch_env,
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["segment"][0] == 200 and answer["segment"][1] > 5
    status, recipes = answer["recipes"]
    assert status == 200 and recipes["training"]["available"] is False
    assert "pip install 'nucleiseg[train]'" in recipes["training"]["message"]
    status, body = answer["train"]
    assert status == 501 and "pip install 'nucleiseg[train]'" in body["error"]
    assert answer["torch"] is False


def test_web_app_with_torch_offers_training(tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from nucleiseg.app.server import create_app

    with TestClient(create_app()) as client:
        body = client.get("/api/recipes").json()
    assert body["training"] == {"available": True, "message": ""} and "unet" in body["architectures"]
