"""/docs in a real browser: Swagger UI, from the gateway's own files, renders every documented route."""

from __future__ import annotations

import pytest
import requests

from tests.browser.conftest import shot

pytestmark = pytest.mark.slow


def test_every_documented_route_renders_offline(browser, stack):
    spec = requests.get(stack.url + "/openapi.json", timeout=10).json()
    documented = {(method.upper(), path) for path, ops in spec["paths"].items() for method in ops
                  if method != "parameters"}
    context = browser.new_context(viewport={"width": 1200, "height": 1000})
    page = context.new_page()
    errors, elsewhere = [], []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("request", lambda r: None if r.url.startswith((stack.url, "data:")) else elsewhere.append(r.url))
    page.goto(stack.url + "/docs")
    page.wait_for_selector(".opblock", timeout=20_000)
    page.wait_for_function(f"document.querySelectorAll('.opblock').length >= {len(documented)}", timeout=20_000)
    shown = set(tuple(pair) for pair in page.eval_on_selector_all(".opblock", """blocks => blocks.map(b => [
        b.querySelector('.opblock-summary-method').textContent.trim(),
        b.querySelector('.opblock-summary-path').getAttribute('data-path')])"""))
    shot(page, "docs")
    assert "Unable to render" not in page.content()
    context.close()
    assert shown == documented, {"missing": documented - shown, "extra": shown - documented}
    assert any(path.startswith("/sdapi/") for _, path in shown) and ("POST", "/v1/images/edits") in shown
    assert errors == [] and elsewhere == [], (errors, elsewhere)
