"""The page as a product: the output beside the controls on a desktop and brought into view on a phone, a
lightbox, the gallery of this client's images from the service (view, reuse, edit, delete), aspect choices
with a swap, and an automated accessibility check (axe-core) at both widths. Screenshots of each go to
test-artifacts/browser/."""

from __future__ import annotations

import re

import pytest
import requests
from playwright.sync_api import expect

from tests.browser.conftest import shot
from tests.browser.test_page import fill
from tests.helpers import wait_until

pytestmark = pytest.mark.slow

DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


def _open(browser, stack, viewport, **kw):
    context = browser.new_context(viewport=viewport, **kw)
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(stack.url + "/")
    page.wait_for_function("document.getElementById('server-state').dataset.state === 'ok'", timeout=20_000)
    return context, page, errors


def _in_view(page, selector: str) -> bool:
    box = page.locator(selector).bounding_box()
    height = page.viewport_size["height"]
    return box is not None and box["y"] >= 0 and box["y"] + min(box["height"], 200) <= height


def _serious(page) -> list:
    from axe_playwright_python.sync_playwright import Axe

    found = Axe().run(page).response["violations"]
    return [(v["id"], v["impact"], [n["target"] for n in v["nodes"]][:3]) for v in found
            if v["impact"] in ("serious", "critical")]


def test_on_a_desktop_the_result_is_beside_the_controls_in_view_and_opens_full_size(browser, stack):
    context, page, errors = _open(browser, stack, DESKTOP)
    assert _serious(page) == []
    fill(page, "a lighthouse at dawn", steps=2)
    page.select_option("#batch", "2")
    page.click("#submit")
    expect(page.locator("#result")).to_be_visible(timeout=60_000)
    form, image = page.locator("#form").bounding_box(), page.locator("#image").bounding_box()
    assert image["x"] >= form["x"] + form["width"]  # beside the form, not under it
    assert _in_view(page, "#image") and image["y"] + image["height"] <= DESKTOP["height"]
    shot(page, "layout-desktop-result")
    assert _serious(page) == []

    page.click("#view")
    dialog = page.locator("#lightbox")
    expect(dialog).to_be_visible()
    expect(page.locator("#lightbox-caption")).to_contain_text("1 of 2")
    page.keyboard.press("ArrowRight")
    expect(page.locator("#lightbox-caption")).to_contain_text("2 of 2")
    assert "index=1" in page.get_attribute("#lightbox-image", "src")
    shot(page, "layout-desktop-lightbox")
    assert _serious(page) == []
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    context.close()
    assert errors == []


def test_on_a_phone_progress_and_result_come_into_view_and_nothing_scrolls_sideways(browser, stack):
    context, page, errors = _open(browser, stack, PHONE, is_mobile=True)
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    assert _serious(page) == []
    fill(page, "a red bicycle", steps=12)
    page.click("#submit")
    expect(page.locator("#progress-area")).to_be_visible()
    assert _in_view(page, "#progress-area")  # tapping Generate shows the progress, not just a grey button
    shot(page, "layout-phone-progress")
    expect(page.locator("#result")).to_be_visible(timeout=60_000)
    page.wait_for_timeout(200)
    assert _in_view(page, "#result")
    shot(page, "layout-phone-result")
    assert _serious(page) == []
    context.close()
    assert errors == []


def test_the_gallery_shows_the_services_images_to_view_reuse_edit_and_delete(page, stack):
    for prompt in ("first picture", "second picture"):
        fill(page, prompt, steps=2)
        page.click("#submit")
        expect(page.locator("#caption")).to_contain_text("2 steps", timeout=60_000)
        expect(page.locator("#submit")).to_be_enabled()
    # This module's other jobs are this client's too (no keys: its address), so the service lists them as well.
    items = page.locator("#gallery li").filter(has_text="picture")
    expect(items).to_have_count(2)
    first = items.first
    assert re.match(r"/v1/jobs/[0-9a-f]{32}/image\?index=0$", first.locator("img").get_attribute("src"))
    assert first.locator("img").evaluate("i => i.naturalWidth") == 256  # the image itself, from the service

    first.get_by_role("button", name=re.compile("^View")).click()
    expect(page.locator("#lightbox-caption")).to_contain_text("second picture")
    page.click("#lightbox-close")

    page.fill("#prompt", "something else")
    items.nth(1).get_by_role("button", name=re.compile("Use these settings")).click()
    expect(page.locator("#prompt")).to_have_value("first picture")

    first.get_by_role("button", name=re.compile("Start from this image")).click()
    expect(page.locator("#source-editor")).to_be_visible()

    job_url = stack.url + first.locator("img").get_attribute("src")
    page.once("dialog", lambda d: d.accept())
    first.get_by_role("button", name=re.compile("Delete from the server")).click()
    expect(items).to_have_count(1)
    assert requests.get(job_url, timeout=5).status_code == 404  # gone from the server, not just the list
    shot(page, "gallery")

    page.once("dialog", lambda d: d.dismiss())  # "Clear the list" asks first; saying no keeps it
    page.click("#gallery-clear")
    expect(items).to_have_count(1)
    page.wait_for_timeout(200)
    page.once("dialog", lambda d: d.accept())
    page.click("#gallery-clear")
    expect(page.locator("#gallery li")).to_have_count(0)
    expect(page.locator("#gallery-empty")).to_be_visible()
    page.reload()  # the server still has these jobs: a cleared list does not bring them back
    page.wait_for_function("document.getElementById('server-state').dataset.state === 'ok'", timeout=20_000)
    page.wait_for_timeout(500)
    expect(page.locator("#gallery li")).to_have_count(0)


def test_aspect_choices_keep_the_models_pixels_and_swap_turns_them(page):
    page.select_option("#aspect", "1.7778")
    expect(page.locator("#width")).to_have_value("704")
    expect(page.locator("#height")).to_have_value("384")
    page.click("#swap")
    expect(page.locator("#width")).to_have_value("384")
    expect(page.locator("#height")).to_have_value("704")
    expect(page.locator("#aspect")).to_have_value("0.5625")  # the swapped shape is named
    page.select_option("#width", "640")
    expect(page.locator("#aspect")).to_have_value("")  # a shape of one's own is custom


def test_the_inpaint_editor_paints_at_the_images_size_with_eraser_undo_invert_and_zoom(page, stack, tmp_path):
    from PIL import Image

    path = tmp_path / "wide.png"
    Image.new("RGB", (96, 64), (40, 90, 200)).save(path)
    page.set_input_files("#init-image", str(path))
    expect(page.locator("#source-editor")).to_be_visible()
    assert page.eval_on_selector("#mask-canvas", "c => [c.width, c.height]") == [96, 64]  # the image's pixels
    alpha = "([x, y]) => document.getElementById('mask-canvas').getContext('2d').getImageData(x, y, 1, 1).data[3]"

    def stroke(x0, y0, x1, y1):
        page.locator("#mask-canvas").scroll_into_view_if_needed()
        box = page.locator("#mask-canvas").bounding_box()
        page.mouse.move(box["x"] + box["width"] * x0, box["y"] + box["height"] * y0)
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] * x1, box["y"] + box["height"] * y1, steps=6)
        page.mouse.up()

    stroke(0.2, 0.5, 0.4, 0.5)
    assert page.evaluate(alpha, [29, 32]) == 255 and page.evaluate(alpha, [80, 10]) == 0
    expect(page.locator("#source-help")).to_contain_text("white")
    page.check("#tool-eraser")
    page.fill("#brush", "64")  # wider than the stroke it erases, wherever the layout moved it by a few pixels
    stroke(0.1, 0.5, 0.5, 0.5)
    assert page.evaluate(alpha, [29, 32]) == 0
    expect(page.locator("#source-help")).to_contain_text("whole image")  # nothing painted any more
    page.click("#mask-undo")
    assert page.evaluate(alpha, [29, 32]) == 255
    page.click("#mask-invert")
    assert page.evaluate(alpha, [29, 32]) == 0 and page.evaluate(alpha, [80, 10]) == 255
    page.focus("#paint-scroll")
    page.keyboard.press("Control+z")  # undo the invert
    assert page.evaluate(alpha, [80, 10]) == 0 and page.evaluate(alpha, [29, 32]) == 255
    width = page.locator("#paint").bounding_box()["width"]
    page.select_option("#zoom", "2")
    assert page.locator("#paint").bounding_box()["width"] == pytest.approx(2 * width, rel=0.02)
    shot(page, "inpaint-editor")
    page.fill("#prompt", "a wide door")
    page.fill("#steps", "4")
    page.click("#submit")
    expect(page.locator("#caption")).to_contain_text("inpaint", timeout=60_000)


def test_several_jobs_queue_from_the_page_each_with_its_state_and_its_own_cancel(page, stack):
    fill(page, "first in line", steps=30)
    page.click("#submit")
    expect(page.locator("#progress-area")).to_be_visible()
    expect(page.locator("#submit")).to_have_text("Queue another")
    page.fill("#prompt", "second in line")
    page.fill("#steps", "2")
    page.click("#submit")
    page.fill("#prompt", "third, cancelled")
    page.click("#submit")
    waiting = page.locator("#queue li")
    expect(waiting).to_have_count(2)
    expect(waiting.first).to_contain_text("second in line")
    expect(waiting.nth(1)).to_contain_text("waiting, position")
    shot(page, "queue")
    waiting.nth(1).get_by_role("button", name="Cancel: third, cancelled").click()
    expect(waiting).to_have_count(1)
    # The first ends, then the second is followed and shown in its turn.
    expect(page.locator("#image")).to_have_attribute("alt", re.compile("first in line"), timeout=60_000)
    expect(page.locator("#image")).to_have_attribute("alt", re.compile("second in line"), timeout=60_000)
    expect(page.locator("#queue-area")).to_be_hidden()
    expect(page.locator("#submit")).to_have_text("Generate")
    prompts = page.locator("#gallery li .caption").all_inner_texts()
    assert prompts[:2] == ["second in line", "first in line"] and "third, cancelled" not in prompts


def test_a_gallery_image_is_upscaled_and_each_api_key_has_its_own_list(page):
    fill(page, "small picture", steps=2)
    page.click("#submit")
    expect(page.locator("#caption")).to_contain_text("2 steps", timeout=60_000)
    page.locator("#gallery li").first.get_by_role("button", name=re.compile("Upscale ×2")).click()
    expect(page.locator("#caption")).to_contain_text("Upscaled ×2 with Lanczos · 512×512", timeout=60_000)
    separate = page.evaluate("""async () => {
        const g = await import("/static/gallery.js");
        g.useOwner("key-a"); g.merge([{ id: "x/0", params: { prompt: "a's", seed: 1 } }]);
        g.useOwner("key-b"); const other = g.load().length;
        g.useOwner("key-a"); const own = g.load().length;
        g.useOwner(""); return [own, other]; }""")
    assert separate == [1, 0]


def test_the_gallery_lists_this_clients_jobs_made_elsewhere(browser, stack):
    made = requests.post(f"{stack.url}/v1/jobs", json={"prompt": "made by the API", "steps": 2, "width": 256,
                                                          "height": 256, "n": 2}, timeout=10).json()
    wait_until(lambda: requests.get(f"{stack.url}/v1/jobs/{made['id']}", timeout=5).json()["state"] == "succeeded",
               60, 0.2)
    context, page, errors = _open(browser, stack, DESKTOP)  # a fresh browser: nothing kept locally
    items = page.locator("#gallery li").filter(has_text="made by the API")
    expect(items).to_have_count(2)
    expect(items.first.locator(".caption")).to_have_text("made by the API")
    assert items.first.locator("img").get_attribute("src") == f"/v1/jobs/{made['id']}/image?index=0"
    items.first.get_by_role("button", name=re.compile("Use these settings")).click()
    expect(page.locator("#prompt")).to_have_value("made by the API")
    expect(page.locator("#steps")).to_have_value("2")
    context.close()
    assert errors == []
