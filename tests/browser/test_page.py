"""The web page in a real browser: submit, progress, preview, cancel, errors, restart, gallery."""

from __future__ import annotations

import re
import signal

import pytest
import requests
from playwright.sync_api import expect

from tests.browser.conftest import reuse, shot
from tests.helpers import wait_ready

pytestmark = pytest.mark.slow


def fill(page, prompt: str, steps: int, size: int = 256, seed: str = ""):
    page.fill("#prompt", prompt)
    page.fill("#steps", str(steps))
    page.select_option("#width", str(size))
    page.select_option("#height", str(size))
    page.fill("#seed", seed)


def test_submit_shows_progress_a_preview_then_the_image_at_its_size(page):
    expect(page.locator("#server-state")).to_contain_text("ready")
    expect(page.locator("#scheduler option")).not_to_have_count(0)
    fill(page, "a lighthouse at dawn", steps=60, size=512, seed="1234")
    page.click("#submit")
    expect(page.locator("#status")).to_have_text(re.compile(r"Step \d+/60"), timeout=20_000)
    first = page.eval_on_selector("#bar", "b => b.value")
    expect(page.locator("#preview")).to_be_visible(timeout=10_000)
    page.wait_for_function(f"document.getElementById('bar').value > {first}", timeout=20_000)
    shot(page, "1-progress")
    expect(page.locator("#result")).to_be_visible(timeout=60_000)
    page.wait_for_function("document.getElementById('image').naturalWidth > 0")
    assert page.eval_on_selector("#image", "i => [i.naturalWidth, i.naturalHeight]") == [512, 512]
    expect(page.locator("#caption")).to_contain_text("Seed 1234")
    expect(page.locator("#download")).to_have_attribute("href", re.compile(r"/v1/jobs/\w+/image"))
    expect(page.locator("#gallery li").filter(has_text="a lighthouse at dawn")).to_have_count(1)
    shot(page, "2-done")


def test_a_preset_fills_the_form_and_is_sent_with_the_request(page):
    expect(page.locator("#preset option")).to_have_count(3)
    expect(page.locator("#preset")).to_have_value("quality")
    page.select_option("#preset", "fast")
    expect(page.locator("#steps")).to_have_value("4")
    expect(page.locator("#guidance")).to_have_value("1")
    expect(page.locator("#scheduler")).to_have_value("lcm")
    expect(page.locator("#preset-help")).to_contain_text("LCM-LoRA")
    page.fill("#prompt", "a red fox in snow")
    page.select_option("#width", "512")
    page.select_option("#height", "512")
    page.click("#submit")
    expect(page.locator("#caption")).to_contain_text("fast · 4 steps", timeout=60_000)
    page.wait_for_function("document.getElementById('image').naturalWidth === 512")
    shot(page, "9-fast-preset")


def test_token_merging_is_sent_shown_in_the_caption_and_restored_from_the_gallery(page, stack):
    fill(page, "a lighthouse, merged", steps=2)
    page.select_option("#token-merging", "0.5")
    page.click("#submit")
    expect(page.locator("#caption")).to_contain_text("token merging 0.5", timeout=60_000)
    job_id = page.get_attribute("#image", "src").split("/v1/jobs/")[1].split("/")[0]
    assert requests.get(f"{stack.url}/v1/jobs/{job_id}", timeout=5).json()["params"]["token_merging"] == 0.5
    page.select_option("#token-merging", "0")
    reuse(page)
    expect(page.locator("#token-merging")).to_have_value("0.5")


def test_cancel_mid_run_shows_the_cancelled_state(page):
    fill(page, "a long one", steps=100, size=512)
    page.click("#submit")
    expect(page.locator("#status")).to_have_text(re.compile(r"Step \d+/100"), timeout=20_000)
    page.click("#cancel")
    expect(page.locator("#status")).to_contain_text("Cancelled", timeout=10_000)
    expect(page.locator("#submit")).to_be_enabled()
    expect(page.locator("#result")).to_be_hidden()
    shot(page, "3-cancelled")


def test_a_too_long_prompt_is_stopped_on_the_page_with_one_message(page):
    fill(page, "x" * 201, steps=2)
    expect(page.locator("#counter")).to_have_text("201/200")
    requests_sent = []
    page.on("request", lambda r: requests_sent.append(r.url) if r.method == "POST" else None)
    page.click("#submit")
    error = page.locator("#error")
    expect(error).to_be_visible()
    expect(error).to_have_text("The prompt is 201 characters; this server takes at most 200. Shorten it by 1 "
                               "characters.")
    assert requests_sent == [] and page.evaluate("document.activeElement.id") == "prompt"
    shot(page, "4-prompt-too-long")


def test_the_timing_line_ends_with_the_total_and_never_a_stale_estimate(page):
    fill(page, "a quick one", steps=3)
    page.click("#submit")
    expect(page.locator("#timing")).to_have_text(re.compile(r"^Done in \d"), timeout=60_000)
    fill(page, "a long one", steps=100, size=512)
    page.click("#submit")
    expect(page.locator("#status")).to_have_text(re.compile(r"Step \d+/100"), timeout=20_000)
    page.click("#cancel")
    expect(page.locator("#timing")).to_have_text(re.compile(r"^Cancelled in \d"), timeout=10_000)
    assert "left" not in page.text_content("#timing")


def test_changing_a_presets_values_says_custom_and_the_caption_speaks_plainly(page):
    expect(page.locator("#preset-help")).not_to_contain_text("Custom")
    page.fill("#steps", "60")
    expect(page.locator("#preset-help")).to_have_text("Custom (quality changed): 60 steps · guidance 7.5 · "
                                                      "the model's sampler")
    page.select_option("#preset", "fast")
    expect(page.locator("#preset-help")).not_to_contain_text("Custom")
    page.fill("#prompt", "a plain caption")
    page.select_option("#width", "256")
    page.select_option("#height", "256")
    page.click("#submit")
    expect(page.locator("#caption")).to_contain_text("fast · 4 steps · no guidance · lcm", timeout=60_000)


def test_generate_has_enough_contrast_and_the_page_a_favicon(page, stack):
    def luminance(rgb):
        def channel(c):
            c /= 255
            return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4
        r, g, b = (channel(float(v)) for v in rgb)
        return 0.2126 * r + 0.7152 * g + 0.0722 * b

    colours = page.eval_on_selector("#submit", "b => [getComputedStyle(b).color, getComputedStyle(b).backgroundColor]")
    fg, bg = (re.findall(r"\d+", c)[:3] for c in colours)
    ratio = (luminance(fg) + 0.05) / (luminance(bg) + 0.05)
    assert max(ratio, 1 / ratio) >= 4.5, colours
    icon = page.get_attribute("link[rel=icon]", "href")
    assert requests.get(stack.url + icon, timeout=5).headers["content-type"].startswith("image/svg+xml")


def test_keyboard_only_on_a_phone_width_screen(browser, stack):
    context = browser.new_context(viewport={"width": 375, "height": 740}, is_mobile=True)
    page = context.new_page()
    page.goto(stack.url + "/")
    page.wait_for_function("document.getElementById('server-state').dataset.state === 'ok'")
    assert page.evaluate("document.documentElement.scrollWidth") <= 375  # no sideways scrolling
    page.focus("#prompt")
    page.keyboard.type("a small red cube")
    order = []
    for _ in range(14):  # Tab walks the form in reading order
        page.keyboard.press("Tab")
        order.append(page.evaluate("document.activeElement.id"))
    assert order == ["negative", "model", "preset", "size", "aspect", "width", "height", "swap", "steps", "guidance",
                     "scheduler", "token-merging", "batch", "seed"]
    page.keyboard.press("Control+a")
    page.keyboard.type("77")
    for _ in range(5):  # back through the image count, token merging, the sampler and guidance to steps
        page.keyboard.press("Shift+Tab")
    page.keyboard.press("Control+a")
    page.keyboard.type("3")
    page.keyboard.press("Enter")  # Enter in any field submits the form
    expect(page.locator("#result")).to_be_visible(timeout=30_000)
    expect(page.locator("#caption")).to_contain_text("Seed 77 · 512×512 · quality · 3 steps")
    for control in page.locator("input, select, textarea").all():
        assert control.evaluate("c => c.labels.length > 0"), control.get_attribute("id")
    shot(page, "5-phone")
    context.close()


def test_reuse_last_seed_and_the_gallery_fill_the_form(page):
    fill(page, "gallery item", steps=2, seed="")
    page.click("#submit")
    expect(page.locator("#result")).to_be_visible(timeout=30_000)
    seed = re.search(r"Seed (\d+)", page.inner_text("#caption")).group(1)
    page.click("#seed-random")
    expect(page.locator("#seed")).to_have_value("")
    page.click("#seed-reuse")
    expect(page.locator("#seed")).to_have_value(seed)
    page.fill("#prompt", "something else")
    reuse(page)
    expect(page.locator("#prompt")).to_have_value("gallery item")
    expect(page.locator("#seed")).to_have_value(seed)
    page.click("#copy-curl")
    expect(page.locator("#curl")).to_contain_text("/generate")
    expect(page.locator("#curl")).to_contain_text(f'"seed":{seed}')


def test_the_page_keeps_working_after_the_model_server_restarts(page, stack, log_dir):
    stack.model_server.signal(signal.SIGKILL)
    stack.model_server.stop()
    expect(page.locator("#server-state")).to_contain_text("unreachable", timeout=15_000)
    fill(page, "while down", steps=2)
    page.click("#submit")
    expect(page.locator("#error")).to_contain_text("model server", timeout=10_000)
    shot(page, "6-model-server-down")
    stack.restart_model_server(log_dir)
    wait_ready(stack.url, stack.model_server)
    expect(page.locator("#server-state")).to_contain_text("ready", timeout=15_000)
    fill(page, "after the restart", steps=3)
    page.click("#submit")
    expect(page.locator("#result")).to_be_visible(timeout=30_000)
    shot(page, "7-after-restart")


def test_with_api_keys_the_page_asks_for_one_and_then_works(browser, log_dir, tiny_model_dir):
    from tests.integration.conftest import start_stack, stop_stack

    stack = start_stack(log_dir, tiny_model_dir, gateway_env={"API_KEYS": "page-key-1", "AUTH_PUBLIC_HEALTH": "true"})
    try:
        # Health is public here (AUTH_PUBLIC_HEALTH), so readiness checks work; jobs need the key.
        context = browser.new_context()
        page = context.new_page()
        page.goto(stack.url + "/")
        page.wait_for_function("document.getElementById('server-state').dataset.state === 'ok'")
        expect(page.locator("#key-form")).to_be_hidden()
        fill(page, "a locked door", steps=2)
        page.click("#submit")
        expect(page.locator("#key-form")).to_be_visible()
        expect(page.locator("#error")).to_contain_text("API key")
        page.fill("#api-key", "page-key-1")
        page.click("#key-form button")
        expect(page.locator("#key-form")).to_be_hidden()
        page.click("#submit")
        expect(page.locator("#result")).to_be_visible(timeout=30_000)  # SSE and <img> carry the cookie
        page.wait_for_function("document.getElementById('image').naturalWidth === 256")
        shot(page, "8-api-key")
        context.close()
    finally:
        stop_stack(stack)


def test_starting_from_an_image_with_a_painted_mask_runs_inpainting(page, tmp_path):
    from PIL import Image

    path = tmp_path / "start.png"
    Image.new("RGB", (128, 128), (200, 40, 40)).save(path)
    expect(page.locator("#server-state")).to_contain_text("ready")
    fill(page, "a red door", steps=8, size=256, seed="11")
    expect(page.locator("#source-editor")).to_be_hidden()
    page.set_input_files("#init-image", str(path))
    expect(page.locator("#source-editor")).to_be_visible()
    page.fill("#strength", "0.5")
    expect(page.locator("#strength-value")).to_have_text("0.5")
    page.locator("#mask-canvas").scroll_into_view_if_needed()  # the mouse paints where it can reach
    box = page.locator("#mask-canvas").bounding_box()
    page.mouse.move(box["x"] + 20, box["y"] + 20)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2, steps=5)
    page.mouse.up()
    expect(page.locator("#source-help")).to_contain_text("white")
    shot(page, "10-inpaint-form")
    page.click("#submit")
    expect(page.locator("#caption")).to_contain_text("inpaint at strength 0.5", timeout=60_000)
    page.wait_for_function("document.getElementById('image').naturalWidth === 256")
    shot(page, "11-inpaint-done")
    # Removing the image goes back to text-to-image.
    page.click("#source-clear")
    expect(page.locator("#source-editor")).to_be_hidden()
    page.click("#submit")
    expect(page.locator("#caption")).not_to_contain_text("inpaint", timeout=60_000)


def test_a_wide_start_image_keeps_its_shape_in_the_paint_area_and_can_give_its_size(page, stack, tmp_path):
    from PIL import Image

    path = tmp_path / "wide.png"
    Image.new("RGB", (300, 150), (20, 90, 200)).save(path)
    expect(page.locator("#server-state")).to_contain_text("ready")
    fill(page, "a wide sea", steps=3, size=256)
    page.set_input_files("#init-image", str(path))
    expect(page.locator("#source-size")).to_have_text("Use its size (300 × 150)")
    box = page.locator("#paint").bounding_box()
    assert abs(box["width"] / box["height"] - 2) < 0.05  # the image's shape, not a square
    assert page.eval_on_selector("#mask-canvas", "c => [c.width, c.height]") == [300, 150]  # its own pixels
    page.click("#source-size")
    expect(page.locator("#width")).to_have_value("304")  # 300 to a multiple of 8
    expect(page.locator("#height")).to_have_value("152")
    expect(page.locator("#resize-mode")).to_have_value("crop")
    page.select_option("#resize-mode", "fill")
    page.click("#submit")
    expect(page.locator("#caption")).to_contain_text("img2img", timeout=60_000)
    job_id = page.get_attribute("#image", "src").split("/v1/jobs/")[1].split("/")[0]
    job = requests.get(f"{stack.url}/v1/jobs/{job_id}", timeout=5).json()
    assert (job["params"]["width"], job["params"]["height"], job["params"]["resize_mode"]) == (304, 152, "fill")


def test_a_batch_shows_every_image_and_the_shortcuts_generate_and_cancel(page, stack):
    fill(page, "four lighthouses", steps=2, seed="40")
    page.select_option("#batch", "4")
    page.locator("#negative").focus()
    page.keyboard.press("Control+Enter")
    expect(page.locator("#batch-strip li")).to_have_count(4, timeout=60_000)
    expect(page.locator("#caption")).to_contain_text("Seed 40")
    page.locator("#batch-strip button").nth(2).click()
    expect(page.locator("#caption")).to_contain_text("Seed 42")
    expect(page.locator("#batch-strip button").nth(2)).to_have_attribute("aria-current", "true")
    expect(page.locator("#gallery li").filter(has_text="four lighthouses")).to_have_count(4)  # every image it made
    shot(page, "12-batch")
    fill(page, "a long one", steps=100, size=512)
    page.select_option("#batch", "1")
    page.keyboard.press("Control+Enter")
    expect(page.locator("#status")).to_have_text(re.compile(r"Step \d+/100"), timeout=20_000)
    page.keyboard.press("Escape")
    expect(page.locator("#status")).to_contain_text("Cancelled", timeout=10_000)


def test_copy_as_curl_after_image_to_image_brings_the_image_and_runs(page, stack, tmp_path):
    import subprocess

    from PIL import Image

    start = tmp_path / "start.png"
    Image.new("RGB", (128, 128), (200, 40, 40)).save(start)
    fill(page, "a red door, $HOME `x` \\ 'quoted'", steps=3, size=256, seed="5")
    page.set_input_files("#init-image", str(start))
    page.click("#submit")
    expect(page.locator("#caption")).to_contain_text("img2img", timeout=60_000)
    page.click("#copy-curl")
    command = page.text_content("#curl")
    assert "base64 -w0 start.png" in command and '"n"' not in command
    done = subprocess.run(["bash", "-c", command], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    made = Image.open(tmp_path / "image.png")
    assert made.size == (256, 256)
    assert "Denoising strength" in made.info["parameters"] and "$HOME `x`" in made.info["parameters"]


def test_a_result_is_sent_to_image_to_image_at_its_size(page):
    fill(page, "a lighthouse to repaint", steps=2, size=256)
    page.click("#submit")
    expect(page.locator("#caption")).to_contain_text("256×256", timeout=60_000)
    page.click("#send-to-source")
    expect(page.locator("#source-editor")).to_be_visible()
    expect(page.locator("#source-size")).to_have_text("Use its size (256 × 256)")
    page.click("#submit")
    expect(page.locator("#caption")).to_contain_text("img2img at strength 0.75", timeout=60_000)


def test_a_pngs_settings_fill_the_form(page, stack, tmp_path):
    body = {"prompt": "a (harbour:1.1) at noon", "steps": 3, "seed": 321, "width": 320, "height": 256,
            "scheduler": "euler"}
    made = requests.post(stack.url + "/generate", json=body, timeout=60)
    path = tmp_path / "made.png"
    path.write_bytes(made.content)
    page.set_input_files("#png-info", str(path))
    expect(page.locator("#png-info-help")).to_contain_text("Read: prompt")
    expect(page.locator("#prompt")).to_have_value(body["prompt"])
    expect(page.locator("#seed")).to_have_value("321")
    expect(page.locator("#steps")).to_have_value("3")
    expect(page.locator("#width")).to_have_value("320")
    expect(page.locator("#scheduler")).to_have_value("euler")
