"""The web page's model names and Performance progress line, run in Debian's chromium (no server)."""

from __future__ import annotations

from pathlib import Path

import pytest

STATIC = Path(__file__).resolve().parents[1] / "src" / "nucleiseg" / "app" / "static"
CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def page():
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} not found: install it with `.ci/install-browser.sh` (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        pg = browser.new_page()
        pg.set_content("<html><body><p id='out'></p></body></html>")
        pg.add_script_tag(content=(STATIC / "common.js").read_text(encoding="utf-8"))
        yield pg
        browser.close()


@pytest.mark.parametrize(
    ("full", "name", "engine"),
    [
        ("default-onnx-int8-static", "default", "ONNX Runtime int8"),
        ("accurate-onnx-fp32", "accurate", "ONNX Runtime fp32"),
        ("my-run-onnx-int8-dynamic", "my-run", "ONNX Runtime int8 (dynamic)"),
        ("web-run-2", "web-run-2", ""),
        ("classical", "classical", ""),
    ],
)
def test_model_names_as_users_know_them(page, full: str, name: str, engine: str) -> None:
    assert page.evaluate("(n) => modelParts(n)", full) == {"name": name, "engine": engine}
    page.evaluate("(n) => document.getElementById('out').replaceChildren('model ', modelNode(n))", full)
    assert page.inner_text("#out").strip() == f"model {name} {engine}".strip()
    assert page.inner_text("#out small.engine").strip() == engine if engine else page.locator("#out small").count() == 0


def test_performance_progress_counts_the_images_of_the_current_model(page) -> None:
    # 5 images, two models: the job counts 10 steps; the line counts the images of the model running.
    first = {"done": 0, "total": 10, "images": 5, "models": ["default", "accurate"], "model": "default", "model_index": 0}
    assert page.evaluate("(p) => evaluationProgressText(p)", first) == "Segmenting with default (model 1 of 2): 0 of 5 images"
    second = {**first, "done": 7, "model": "accurate", "model_index": 1, "eta_s": 12}
    assert page.evaluate("(p) => evaluationProgressText(p)", second) == (
        "Segmenting with accurate (model 2 of 2): 2 of 5 images · about 12 s left")
    one = {"done": 3, "total": 5, "images": 5, "models": ["default-onnx-int8-static"], "model": "default-onnx-int8-static",
           "model_index": 0}
    assert page.evaluate("(p) => evaluationProgressText(p)", one) == "Segmenting with default: 3 of 5 images"
