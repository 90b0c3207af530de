"""Finishing on the page in a real browser: the hires fix in the form, "Restore faces", and "Upscale x2 / x4"
on a result, whose upscaled image replaces it with its size shown; tiny upscaler files in UPSCALER_DIR and
a tiny face restorer with its detector in FACE_RESTORER_DIR."""

from __future__ import annotations


import pytest
import requests
from playwright.sync_api import expect

from tests.browser.conftest import reuse, shot
from tests.integration.conftest import start_stack, stop_stack

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(log_dir, tiny_model_dir, tmp_path_factory):
    from model_server.engine.tiny_faces import write_tiny_faces
    from model_server.engine.tiny_upscalers import write_tiny_upscalers

    folder = tmp_path_factory.mktemp("page-upscalers")
    write_tiny_upscalers(folder, names=("4x-tiny-esrgan.pth",))
    faces = tmp_path_factory.mktemp("page-faces")
    write_tiny_faces(faces)
    stack = start_stack(log_dir, tiny_model_dir, UPSCALER_DIR=folder, FACE_RESTORER_DIR=faces)
    yield stack
    stop_stack(stack)


def generate(page, hires: bool = False) -> None:
    page.fill("#prompt", "a lighthouse")
    page.fill("#steps", "2")
    page.select_option("#width", "256")
    page.select_option("#height", "256")
    if hires:
        page.check("#hires")
        page.select_option("#hires-scale", "2")
        page.select_option("#hires-upscaler", "4x-tiny-esrgan")
    page.click("#submit")
    expect(page.locator("#caption")).to_contain_text("Seed", timeout=60_000)


def test_the_hires_fix_is_chosen_in_the_form_and_said_in_the_caption(page, stack):
    expect(page.locator("#hires-options")).to_be_hidden()
    expect(page.locator("#hires-upscaler option[value='Latent']")).to_have_count(1)
    generate(page, hires=True)
    expect(page.locator("#caption")).to_contain_text("512×512")
    expect(page.locator("#caption")).to_contain_text("hires fix ×2 (4x-tiny-esrgan, strength 0.5)")
    shot(page, "20-hires-fix")
    job_id = page.get_attribute("#image", "src").split("/v1/jobs/")[1].split("/")[0]
    job = requests.get(f"{stack.url}/v1/jobs/{job_id}", timeout=5).json()
    assert job["params"]["hires"]["upscaler"] == "4x-tiny-esrgan" and job["images"][0]["width"] == 512
    reuse(page)  # the gallery brings the hires choice back
    expect(page.locator("#hires")).to_be_checked()
    expect(page.locator("#hires-upscaler")).to_have_value("4x-tiny-esrgan")


def test_a_result_is_upscaled_in_place_with_its_size_shown(page, stack):
    generate(page)
    expect(page.locator("#caption")).to_contain_text("256×256")
    expect(page.locator("#upscaler option[value='Latent']")).to_have_count(0)  # pixels only here
    page.select_option("#upscaler", "4x-tiny-esrgan")
    page.click("#upscale-4")
    expect(page.locator("#caption")).to_contain_text("Upscaled ×4 with 4x-tiny-esrgan · 1024×1024", timeout=60_000)
    expect(page.locator("#image")).to_have_attribute("width", "1024")
    shot(page, "21-upscaled")
    page.select_option("#upscaler", "Lanczos")
    page.click("#upscale-2")
    expect(page.locator("#caption")).to_contain_text("Upscaled ×2 with Lanczos · 2048×2048", timeout=60_000)


def test_faces_are_restored_when_ticked_on_a_generation_and_an_upscale(page, stack):
    expect(page.locator("#faces-set")).to_be_visible()
    expect(page.locator("#face-restorer")).to_have_text("tiny-restoreformer")
    page.check("#restore-faces")
    generate(page)
    expect(page.locator("#caption")).to_contain_text("faces restored")
    job_id = page.get_attribute("#image", "src").split("/v1/jobs/")[1].split("/")[0]
    job = requests.get(f"{stack.url}/v1/jobs/{job_id}", timeout=5).json()
    assert job["params"]["face_restoration"] is not None and "faces tiny-restoreformer" in job["engine"]
    page.select_option("#upscaler", "Lanczos")
    page.click("#upscale-2")
    expect(page.locator("#caption")).to_contain_text("Upscaled ×2 with Lanczos · 512×512 · faces restored",
                                                     timeout=60_000)
    shot(page, "22-faces-restored")
    page.uncheck("#restore-faces")
    reuse(page)  # the newest in the gallery brings the choice back
    expect(page.locator("#restore-faces")).to_be_checked()
