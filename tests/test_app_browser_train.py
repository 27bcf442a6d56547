"""The Train, Performance and Predict screens in a real browser (Debian's chromium via Playwright).

Trains the built-in ``tiny`` recipe for a few steps on the bundled examples from the page, watches
the curves update and the run appear with its model card, compares it with ``default`` on the
Performance screen and opens one image's side-by-side difference view, then segments an image
with the new model on the Predict screen. With ``NUCLEISEG_SCREENSHOTS=DIR`` the three screens are
saved as ``DIR/app_train.png``, ``DIR/app_performance.png`` and ``DIR/app_predict.png`` (the
README's figures come from ``docs/figures``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from nucleiseg.app.limits import AppSettings
from nucleiseg.app.server import create_app

from test_app_browser import CHROMIUM, CHROMIUM_ARGS

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
SHOTS = os.environ.get("NUCLEISEG_SCREENSHOTS")


@pytest.fixture(scope="module")
def base_url(tmp_path_factory, live_server) -> Iterator[str]:
    """A live server offering the examples as a dataset, with a runs folder of its own."""
    settings = AppSettings(model="classical", data=(str(EXAMPLES),), runs=str(tmp_path_factory.mktemp("runs")))
    with live_server(create_app(settings=settings), stop_seconds=30) as url:
        yield url


@pytest.fixture(scope="module")
def page(base_url):
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} not found: install Debian's chromium with `.ci/install-browser.sh`")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1360, "height": 1000}, accept_downloads=True)
        pg = context.new_page()
        errors: list[str] = []
        pg.on("pageerror", lambda exc: errors.append(str(exc)))
        pg.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        pg.goto(base_url + "/")
        pg.wait_for_selector("#server-dot.ok", timeout=20_000)
        yield pg
        context.close()
        browser.close()
        assert not errors, f"errors on the page: {errors}"


def _shot(page, name: str) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SHOTS) / name), full_page=True)


def test_train_compare_and_predict_in_the_page(page):
    page.click("[data-testid=tab-train]")
    card = page.locator("[data-testid=dataset-card][data-name=examples]")
    card.locator("[data-testid=dataset-summary]").filter(has_text="5 images (5 with masks)").wait_for(timeout=60_000)
    assert card.locator("img").count() >= 3

    page.select_option("[data-testid=train-dataset]", "examples")
    assert page.input_value("[data-testid=train-from]") == "default"  # fine-tuning unless asked otherwise
    page.select_option("[data-testid=train-from]", "scratch")
    page.select_option("[data-testid=train-recipe]", "tiny")
    page.fill("[data-testid=train-minutes]", "2")
    page.fill("[data-testid=train-epochs]", "4")
    page.click("[data-testid=train-start]")
    page.wait_for_function("() => document.querySelector('#train-command').textContent.includes('recipe.yaml')")
    # The curve is redrawn as epochs end: first with some epochs, then with all four.
    page.wait_for_function("() => Number(document.querySelector('#train-score').dataset.epochs) >= 1", timeout=90_000)
    seen_partial = int(page.locator("#train-score").get_attribute("data-epochs"))
    page.wait_for_selector("[data-testid=train-job][data-state=finished]", timeout=120_000)
    assert page.locator("#train-score").get_attribute("data-epochs") == "4" and seen_partial >= 1
    assert int(page.locator("#train-score").get_attribute("data-points")) >= 4
    status = page.locator("[data-testid=train-status]").inner_text()
    assert "validated and added to the models" in status
    run = status.split("run ")[1].split(" ")[0]
    row = page.locator(f"[data-testid=run-row][data-run='{run}']")
    row.wait_for(timeout=20_000)
    row.click()
    page.locator("[data-testid=run-card]").filter(has_text="Model card").wait_for()
    _shot(page, "app_train.png")

    page.click("[data-testid=tab-performance]")
    page.wait_for_function(f"() => [...document.querySelectorAll('#perf-model-a option')].some(o => o.value === '{run}')")
    page.select_option("[data-testid=perf-dataset]", "examples")
    page.select_option("[data-testid=perf-model-a]", run)
    page.select_option("[data-testid=perf-model-b]", "default")
    page.click("[data-testid=perf-run]")
    page.locator("[data-testid=perf-score-1]").wait_for(timeout=120_000)
    assert 0 <= float(page.locator("[data-testid=perf-score-0]").inner_text()) <= 1
    assert float(page.locator("[data-testid=perf-score-1]").inner_text()) > 0
    assert "nucleiseg evaluate --gt" in page.locator("[data-testid=perf-command]").inner_text()
    rows = page.locator("[data-testid=perf-row]")
    assert rows.count() == 5
    first = rows.nth(0).locator("td").nth(3).inner_text()
    last = rows.nth(4).locator("td").nth(3).inner_text()
    assert float(first) <= float(last)  # worst first
    rows.nth(0).click()
    for k in (0, 1):
        diff = page.locator(f"[data-testid=perf-diff-{k}]")
        page.wait_for_function("el => el.complete && el.naturalWidth > 0", arg=diff.element_handle(), timeout=30_000)
    with page.expect_download() as info:
        page.click("[data-testid=perf-csv]")
    lines = Path(info.value.path()).read_text().strip().splitlines()
    assert lines[0].startswith(f"id,{run}:score") and len(lines) == 6
    _shot(page, "app_performance.png")

    page.click("[data-testid=tab-segment]")
    page.select_option("[data-testid=opt-model]", run)
    page.set_input_files("[data-testid=file-input]", str(EXAMPLES / "fluo_small.png"))
    result = page.locator("[data-testid=result-card].done")
    result.wait_for(timeout=60_000)
    assert f"model {run}" in result.locator(".result-meta").inner_text()
    with page.expect_download() as info:
        result.locator("[data-testid=dl-zip]").click()
    assert info.value.suggested_filename == "fluo_small_nucleiseg.zip"
    _shot(page, "app_predict.png")
