"""Shared fixtures: the real DSB training folder beside the repo and synthetic disk images."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

REPO = Path(__file__).resolve().parents[1]
DSB_ROOT = Path(os.environ.get("NUCLEISEG_DSB", REPO.parent / "shared" / "data" / "dsb2018" / "stage1_train"))

# A few real images of different kinds (fluorescence, brightfield, stained tissue), small ones first.
REAL_IDS = [
    "00071198d059ba7f5914a526d124d28e6d010c92466da21d4a04cd5413362552",
    "003cee89357d9fe13516167fd67b609a164651b21934585648c740d2c3d86dc1",
]


@pytest.fixture(scope="session")
def dsb_root() -> Path:
    """Path of the DSB 2018 stage1_train folder (must exist: CI runs with ../shared beside)."""
    assert DSB_ROOT.is_dir(), f"DSB training data not found at {DSB_ROOT}"
    return DSB_ROOT


@pytest.fixture(scope="session")
def real_sample_dirs(dsb_root: Path) -> list[Path]:
    """Sample folders of a few real DSB images."""
    return [dsb_root / i for i in REAL_IDS]


def disk_labels(shape: tuple[int, int], centers: list[tuple[float, float]], radius: float) -> np.ndarray:
    """Label image with one disk per centre (later disks overwrite earlier ones), ids 1..n."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, np.int32)
    for k, (cy, cx) in enumerate(centers, start=1):
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = k
    return labels


@pytest.fixture
def traced_peak():
    """``traced_peak(step)``: ``(step(), peak bytes allocated while it ran)``, by ``tracemalloc``
    (NumPy's arrays included; memory of C libraries such as ONNX Runtime is not seen)."""

    def run(step):
        tracemalloc.start()
        try:
            value = step()
            return value, tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    return run


@pytest.fixture
def make_disks():
    """Factory fixture: ``make_disks(shape, centers, radius) -> labels``."""
    return disk_labels


def build_tiny_run(folder: Path, int8: bool = False) -> Path:
    """A random U-Net model folder (depth 3, 24 channels) whose head biases are shifted on
    ``examples/fluo_small.png`` so ~15 % of it is foreground (many objects, not one blob), with
    ``model.onnx`` (and a dynamic ``model.int8.onnx`` with ``int8``)."""
    import torch

    from nucleiseg.config import ModelBundleConfig, ModelConfig, NormalizeConfig, save_json
    from nucleiseg.export.onnx import export_onnx
    from nucleiseg.io.images import read_image
    from nucleiseg.models import create_model
    from nucleiseg.training.checkpoint import save_weights
    from nucleiseg.transforms import normalize_image

    params = {"depth": 3, "base_channels": 24}
    torch.manual_seed(0)
    model = create_model("unet", 3, 3, **params).eval()
    image = normalize_image(read_image(REPO / "examples" / "fluo_small.png"), NormalizeConfig())
    with torch.no_grad():
        logits = model(torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)[None])))[0]
        # ~15% foreground; contour and separation channels near 0, so cores are the foreground.
        model.head.bias -= torch.stack([torch.quantile(logits[0].flatten(), 0.85), logits[1].max() + 8, logits[2].max() + 8])
    save_weights(model, folder / "weights.safetensors")
    save_json(ModelBundleConfig(model=ModelConfig(arch="unet", params=params), name="tiny"), folder / "config.json")
    export_onnx(folder, folder / "model.onnx")
    if int8:
        export_onnx(folder, folder / "model.int8.onnx", int8=True, int8_mode="dynamic")
    return folder


@pytest.fixture(scope="session")
def make_tiny_run():
    """Factory fixture: ``make_tiny_run(folder, int8=False) -> folder`` (see :func:`build_tiny_run`)."""
    return build_tiny_run


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serve_live(app, stop_seconds: float = 10) -> Iterator[str]:
    """Run ``app`` on uvicorn at 127.0.0.1 on a free port in a thread; yield its URL, then stop it."""
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=stop_seconds)


@pytest.fixture(scope="session")
def live_server():
    """Factory fixture: ``with live_server(app) as url: ...`` (see :func:`serve_live`)."""
    return serve_live
