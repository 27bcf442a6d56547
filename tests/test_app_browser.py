"""The web page in a real browser: Debian's chromium driven by Playwright against a live server.

The browser is the system one (``/usr/bin/chromium``); when it is missing the tests fail and say
how to install it (``.ci/install-browser.sh``), they are never skipped.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from nucleiseg.app.server import create_app

REPO = Path(__file__).resolve().parents[1]
IMAGE = REPO / "examples" / "fluo_small.png"
MASKS = REPO / "examples" / "fluo_small_masks.tif"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
]


@pytest.fixture(scope="module")
def base_url(live_server) -> Iterator[str]:
    """A live uvicorn server on 127.0.0.1 serving the classical model, stopped afterwards."""
    with live_server(create_app("classical")) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    """Debian's chromium through Playwright (never Playwright's own browser download)."""
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} not found: the browser tests need Debian's chromium; install it with "
            "`.ci/install-browser.sh` (apt-get install chromium)"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, base_url):
    context = browser.new_context(viewport={"width": 1360, "height": 1000}, accept_downloads=True)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.goto(base_url + "/")
    yield pg
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def test_segment_an_image_in_the_page(page, base_url, tmp_path):
    expected = httpx.post(f"{base_url}/api/segment", files={"file": (IMAGE.name, IMAGE.read_bytes())}, timeout=60).json()
    assert expected["count"] > 0
    page.wait_for_selector("#server-dot.ok", timeout=10_000)
    page.set_input_files("[data-testid=file-input]", str(IMAGE))
    card = page.locator("[data-testid=result-card].done")
    card.wait_for(timeout=60_000)
    assert card.locator("[data-testid=count]").inner_text() == str(expected["count"])
    overlay = card.locator("[data-testid=overlay-img]")
    assert overlay.is_visible()
    page.wait_for_function("el => el.complete && el.naturalWidth > 0", arg=overlay.element_handle())
    assert overlay.evaluate("el => [el.naturalWidth, el.naturalHeight]") == [256, 256]
    rows = card.locator("[data-testid=measurements] tbody tr")
    assert rows.count() == expected["count"]

    # Sorting: the area column, clicked twice, puts the largest nucleus first.
    card.locator("[data-testid=sort-area]").click()
    card.locator("[data-testid=sort-area]").click()
    largest = max(r["area"] for r in expected["measurements"])
    assert float(rows.nth(0).locator("td").nth(1).inner_text()) == largest

    # The overlay toggle hides the outlines; zoom changes the displayed size.
    card.locator("[data-testid=overlay-toggle]").uncheck()
    assert overlay.evaluate("el => getComputedStyle(el).opacity") == "0"
    card.locator("[data-testid=overlay-toggle]").check()
    before = overlay.bounding_box()["width"]
    card.locator("[data-testid=zoom-in]").click()
    assert overlay.bounding_box()["width"] > before

    with page.expect_download() as info:
        card.locator("[data-testid=dl-csv]").click()
    download = info.value
    assert download.suggested_filename == "fluo_small_measurements.csv"
    lines = Path(download.path()).read_text().strip().splitlines()
    assert lines[0].startswith("label,area,") and len(lines) == expected["count"] + 1

    shot = tmp_path / "page.png"
    page.screenshot(path=str(shot), full_page=True)
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_errors_are_shown_in_plain_words(page, tmp_path):
    bogus = tmp_path / "notes.png"
    bogus.write_text("this is a text file with an image name\n")
    page.set_input_files("[data-testid=file-input]", str(bogus))
    error = page.locator("[data-testid=error]")
    error.wait_for(state="visible", timeout=30_000)
    assert "Not a supported image" in error.inner_text() and "notes.png" in error.inner_text()
    assert page.locator("[data-testid=result-card].failed").count() == 1


def test_evaluate_tab(page):
    page.click("[data-testid=tab-evaluate]")
    page.set_input_files("[data-testid=eval-image]", str(IMAGE))
    page.set_input_files("[data-testid=eval-gt]", str(MASKS))
    page.click("[data-testid=eval-run]")
    score = page.locator("[data-testid=eval-score]")
    score.wait_for(timeout=60_000)
    assert 0 < float(score.inner_text()) <= 1
    assert page.locator("[data-testid=eval-thresholds] tbody tr").count() == 10
    page.wait_for_function("() => document.querySelector('[data-testid=eval-diff]').naturalWidth === 256")
