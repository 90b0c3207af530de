"""Headless Debian Chromium driven by Playwright, against the real service (tiny model).

Screenshots of each state go to ``test-artifacts/browser/`` for a person to look at. Where
Chromium is missing the tests skip, unless REQUIRE_BROWSER=1 (CI) makes that a failure.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import requests

from tests.helpers import ROOT
from tests.integration.conftest import stack_fixture

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts" / "browser"
# As root on these machines Chromium needs --no-sandbox; the rest stop it calling home.
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="session")
def browser():
    if not Path(CHROMIUM).exists():
        if os.environ.get("REQUIRE_BROWSER") == "1":
            pytest.fail(f"Chromium not found at {CHROMIUM} (REQUIRE_BROWSER=1)")
        pytest.skip(f"Chromium not found at {CHROMIUM}; install Debian's chromium package")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        yield browser
        browser.close()


# tiny brings the fast preset's parts; a one-step model, an SDXL one and two LoRAs fill the pickers.
stack = stack_fixture(loras=True, MODEL_SERVER_QUEUE_SIZE=4, SD_MODEL="tiny", SD_MODELS="tiny-turbo,tiny-sdxl")


@pytest.fixture
def page(browser, stack):
    context = browser.new_context(viewport={"width": 1100, "height": 1000})
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(stack.url + "/")
    page.wait_for_function("document.getElementById('server-state').dataset.state === 'ok'", timeout=20_000)
    yield page
    context.close()
    assert errors == [], f"JavaScript errors on the page: {errors}"


def shot(page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def job_of(page, stack) -> dict:
    """The job of the image shown, as the service reports it."""
    job_id = page.get_attribute("#image", "src").split("/v1/jobs/")[1].split("/")[0]
    return requests.get(f"{stack.url}/v1/jobs/{job_id}", timeout=5).json()


def reuse(page, index: int = 0) -> None:
    """Click "Reuse" on a gallery image (``index``; -1 the last): its settings fill the form."""
    page.locator("#gallery li").nth(index).get_by_role("button", name=re.compile("Use these settings")).click()
