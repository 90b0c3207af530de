"""Control on the page in a real browser: the ControlNet panel offers the chosen model's family's ControlNets,
shows a unit's map before generating, and its units steer the job, come back with "Use these settings" and
go into "Copy as curl"; tiny ControlNets for ``tiny`` and ``tiny-sdxl`` in CONTROLNET_DIR."""

from __future__ import annotations

import pytest
from PIL import Image, ImageDraw
from playwright.sync_api import expect

from tests.browser.conftest import job_of, reuse, shot
from tests.integration.conftest import start_stack, stop_stack

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(log_dir, tiny_model_dir, tmp_path_factory):
    from model_server.engine.tiny_controlnets import write_tiny_controlnets, write_tiny_ip_adapter

    folder = tmp_path_factory.mktemp("page-controlnets")
    write_tiny_controlnets(folder)
    write_tiny_ip_adapter(folder)
    stack = start_stack(log_dir, tiny_model_dir, CONTROLNET_DIR=folder, SD_MODELS="tiny-sdxl")
    yield stack
    stop_stack(stack)


@pytest.fixture(scope="module")
def sketch(tmp_path_factory):
    path = tmp_path_factory.mktemp("sketch") / "sketch.png"
    image = Image.new("RGB", (128, 128), "white")
    ImageDraw.Draw(image).ellipse((16, 16, 112, 112), outline="black", width=6)
    image.save(path)
    return path


def generate(page, prompt: str, caption: str) -> None:
    """A small image from the form as it is, waited for until its caption says ``caption``."""
    page.fill("#prompt", prompt)
    page.fill("#steps", "2")
    page.select_option("#width", "256")
    page.select_option("#height", "256")
    page.click("#submit")
    expect(page.locator("#caption")).to_contain_text(caption, timeout=60_000)


def test_a_unit_shows_its_map_steers_the_job_and_comes_back_with_its_settings(page, stack, sketch):
    expect(page.locator("#control-set")).to_be_visible()
    page.click("#control-add")
    page.set_input_files("#control-image-0", str(sketch))
    expect(page.locator("#control-note-0")).to_contain_text("sketch.png chosen")
    page.select_option("#control-module-0", "canny")
    expect(page.locator("#control-model-0")).to_have_value("tiny-controlnet")
    expect(page.locator("#control-model-0 option")).to_have_count(2)  # tiny's: the SD 1.x folder and single file
    page.get_by_role("button", name="Show map").click()
    expect(page.locator("#control-map-0")).to_be_visible(timeout=20_000)
    assert page.evaluate("document.getElementById('control-map-0').naturalWidth") > 0
    page.fill("#control-weight-0", "0.8")
    generate(page, "a lighthouse in a circle", "ControlNet canny → tiny-controlnet 0.8")
    shot(page, "40-control-unit")
    job = job_of(page, stack)
    assert job["state"] == "succeeded" and job["params"]["controls"][0]["weight"] == 0.8
    page.click("#copy-curl")
    expect(page.locator("#curl")).to_contain_text("$(base64 -w0 control-1.png)")
    expect(page.locator("#curl")).to_contain_text("control-1.png: control unit 1's image")
    page.click("#control-units button[aria-label='Remove control unit 1']")
    expect(page.locator("#control-units li")).to_have_count(0)
    reuse(page)
    expect(page.locator("#control-units li")).to_have_count(1)
    expect(page.locator("#control-weight-0")).to_have_value("0.8")
    # The gallery, rebuilt from this client's finished jobs on the server alone (one sync brings them all): the
    # generation, never the map's detect job.
    page.evaluate("localStorage.clear()")
    page.reload()
    expect(page.locator("#gallery li").filter(has_text="a lighthouse in a circle")).to_have_count(1)
    expect(page.locator("#gallery li").filter(has_text="detect canny")).to_have_count(0)


def test_an_sdxl_model_is_offered_its_own_controlnets(page, stack):
    page.click("#control-add")
    page.select_option("#model", "tiny-sdxl")
    expect(page.locator("#control-model-0")).to_have_value("tiny-sdxl-controlnet")
    expect(page.locator("#control-model-0 option")).to_have_count(1)


def test_the_ip_adapter_module_offers_the_ip_adapters_and_its_unit_runs(page, stack, sketch):
    page.click("#control-add")
    page.select_option("#control-module-0", "ip-adapter")
    expect(page.locator("#control-model-0")).to_have_value("ip-adapter_tiny")
    expect(page.locator("#control-model-0 option")).to_have_count(1)
    page.set_input_files("#control-image-0", str(sketch))
    expect(page.locator("#control-note-0")).to_contain_text("sketch.png chosen")
    generate(page, "a lighthouse like the reference", "ControlNet ip-adapter → ip-adapter_tiny 1")
