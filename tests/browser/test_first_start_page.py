"""The page during a first start: the download's progress bar with its phase, bytes and time
left, then the form once the model is ready. The model comes from the loopback hub stand-in
(tests/helpers/hub_server.py), slowly enough to watch."""

from __future__ import annotations

from tests.browser.conftest import shot
from tests.helpers.hub_server import REPO, FirstStart, HubServer


def test_the_page_shows_the_download_then_the_ready_form(browser, log_dir, tiny_model_dir, tmp_path):
    hub = HubServer({REPO: tiny_model_dir}, rate=100_000).start()  # about 15 s
    service = FirstStart(log_dir, hub.url, tmp_path / "hf-home", tmp_path / "sd-cache")
    context = browser.new_context(viewport={"width": 1100, "height": 800})
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        service.downloaded(1)
        page.goto(service.url + "/")
        page.wait_for_function("!document.getElementById('load').hidden && "
                               "document.getElementById('load-bar').value > 0 && "
                               "document.getElementById('load-detail').textContent.includes('left')", timeout=20_000)
        assert page.text_content("#load-phase").startswith("Downloading the model")
        assert page.is_disabled("#submit")  # Generate waits for the model: its presets are not known yet
        detail = page.text_content("#load-detail")
        assert REPO in detail and " of 1.5 MB (" in detail and "left" in detail, detail
        first = page.eval_on_selector("#load-bar", "bar => bar.value")
        page.wait_for_function(f"document.getElementById('load-bar').value > {first}", timeout=10_000)
        shot(page, "first-start-downloading")

        page.wait_for_function("document.getElementById('server-state').dataset.state === 'ok'", timeout=120_000)
        assert page.is_hidden("#load")
        assert page.is_enabled("#submit")
        shot(page, "first-start-ready")
        assert errors == [], f"JavaScript errors on the page: {errors}"
    finally:
        context.close()
        service.stop()
        hub.stop()
