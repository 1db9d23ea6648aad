"""The web page in a real browser: upload a sheet through the file input, read the results.

Runs the real uvicorn server on a free loopback port and drives headless Chromium with
Playwright. Playwright's own browser download is not used: the system ``chromium``
(``/usr/bin/chromium`` on Debian, or ``$HERBID_CHROMIUM``) is launched instead, and the
tests skip, saying why, only when it is missing or cannot start.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')")
expect, sync_playwright = playwright_api.expect, playwright_api.sync_playwright

from herbid.web.app import create_app
from herbid.web.server import running_server
from test_web import TOKEN, WebAssets, web_assets

pytestmark = pytest.mark.browser

SCREENSHOT = Path("/tmp/herbid-web-screenshot.png")
TIMEOUT_MS = 60_000


def chromium_path() -> str | None:
    for candidate in (os.environ.get("HERBID_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium")):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    executable = chromium_path()
    if executable is None:
        pytest.skip("chromium is not installed (apt-get install chromium, or set HERBID_CHROMIUM)")
    with sync_playwright() as playwright:
        try:
            launched = playwright.chromium.launch(executable_path=executable, headless=True, args=["--no-sandbox"])
        except Exception as exc:  # a browser that cannot start here is an environment problem
            pytest.skip(f"chromium at {executable} could not be launched: {str(exc).splitlines()[0]}")
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> WebAssets:
    return web_assets(tmp_path_factory)


@pytest.fixture(scope="module")
def server(assets: WebAssets) -> Iterator[str]:
    with running_server(create_app(service=assets.service)) as url:
        yield url


def wait_until(page, expression: str, timeout_s: float = TIMEOUT_MS / 1000) -> None:
    """Poll a JS expression from Python: the page's CSP (no eval) rules out wait_for_function."""
    deadline = time.monotonic() + timeout_s
    while not page.evaluate(expression):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {expression}")
        time.sleep(0.1)


def open_page(browser, url: str, **options):
    page = browser.new_page(**options)
    page.goto(url + "/")
    expect(page.locator("#model-info")).to_contain_text("species", timeout=TIMEOUT_MS)  # health loaded
    return page


def results_of(page, index: int = 0) -> dict:
    """What the page shows for one upload card."""
    card = page.locator("article.result").nth(index)
    return {
        "state": card.get_attribute("data-state"),
        "species": card.locator(".species-row .species-name i").all_inner_texts(),
        "status": card.locator(".status").inner_text(),
        "neighbours": card.locator(".neighbour").count(),
    }


def test_upload_through_the_page_shows_the_api_top5(browser, server: str, assets: WebAssets) -> None:
    sheet = assets.sheets[5]
    page = open_page(browser, server, viewport={"width": 1200, "height": 900})
    page.set_input_files("#file-input", str(sheet))
    page.wait_for_selector("article.result[data-state='done']", timeout=TIMEOUT_MS)
    # thumbnails of the similar sheets arrive after the results: wait until they are drawn
    wait_until(page, "document.querySelectorAll('.neighbour').length > 0 && [...document.querySelectorAll("
                     "'.neighbour img.thumb')].every(img => img.complete && img.naturalWidth > 0)")
    shown = results_of(page)
    page.screenshot(path=str(SCREENSHOT), full_page=True)
    page.close()

    expected_count = min(5, len(assets.species))
    assert len(shown["species"]) == expected_count and len(set(shown["species"])) == expected_count
    assert set(shown["species"]) <= set(assets.species)
    api = httpx.post(f"{server}/api/identify", files={"file": (sheet.name, sheet.read_bytes(), "image/jpeg")},
                     timeout=60).json()
    assert shown["species"][0] == api["top"][0]["scientificName"]
    assert shown["species"] == [entry["scientificName"] for entry in api["top"]]
    assert shown["neighbours"] == 6


def test_a_bad_file_shows_the_reason(browser, server: str, tmp_path: Path) -> None:
    fake = tmp_path / "notes.jpg"
    fake.write_text("these are field notes, not a scan\n" * 10)
    page = open_page(browser, server)
    page.set_input_files("#file-input", str(fake))
    page.wait_for_selector("article.result[data-state='error']", timeout=TIMEOUT_MS)
    shown = results_of(page)
    page.close()
    assert "not an image" in shown["status"] and "415" in shown["status"]
    assert shown["species"] == []


def test_token_typed_into_the_page_is_sent(browser, assets: WebAssets) -> None:
    with running_server(create_app(service=assets.service, token=TOKEN)) as url:
        page = open_page(browser, url)
        expect(page.locator("#token-panel")).to_have_attribute("open", "")  # the page asks for the token
        page.set_input_files("#file-input", str(assets.sheets[0]))
        page.wait_for_selector("article.result[data-state='error']", timeout=TIMEOUT_MS)
        assert "token" in results_of(page)["status"]
        page.fill("#token-input", TOKEN)
        page.click("#token-form button[type=submit]")
        page.set_input_files("#file-input", str(assets.sheets[0]))
        page.wait_for_selector("article.result[data-state='done']", timeout=TIMEOUT_MS)
        shown = results_of(page, 0)  # newest card first
        page.close()
    assert shown["state"] == "done" and len(shown["species"]) == 5
