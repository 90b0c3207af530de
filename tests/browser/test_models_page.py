"""The model and LoRA pickers in a real browser: the turbo preset only for a one-step model, the sizes
following the model (SDXL's trained ones), the choices sent, shown in the caption and restored from the
gallery."""

from __future__ import annotations


import pytest
from playwright.sync_api import expect

from tests.browser.conftest import job_of, reuse, shot

pytestmark = pytest.mark.slow


def test_a_one_step_model_brings_the_turbo_preset_and_runs_on_its_own(page, stack):
    expect(page.locator("#model option")).to_have_count(3)
    expect(page.locator("#model")).to_have_value("tiny")
    expect(page.locator("#preset option[value=turbo]")).to_have_count(0)  # not for an SD v1 model
    page.select_option("#model", "tiny-turbo")
    expect(page.locator("#preset")).to_have_value("turbo")
    expect(page.locator("#steps")).to_have_value("1")
    expect(page.locator("#guidance")).to_have_value("0")
    expect(page.locator("#preset option[value=fast]")).to_be_disabled()  # the LCM-LoRA is for many-step models
    page.fill("#prompt", "a fox, in one step")
    page.select_option("#width", "256")
    page.select_option("#height", "256")
    page.click("#submit")
    expect(page.locator("#caption")).to_contain_text("tiny-turbo", timeout=60_000)
    expect(page.locator("#caption")).to_contain_text("turbo · 1 step · no guidance")
    shot(page, "10-turbo-model")
    job = job_of(page, stack)
    assert job["params"]["model"] == "tiny-turbo" and job["model"] == "tiny-turbo"
    page.select_option("#model", "tiny")
    expect(page.locator("#preset")).to_have_value("quality")
    expect(page.locator("#preset option[value=turbo]")).to_have_count(0)


def test_loras_are_picked_weighted_sent_and_restored_from_the_gallery(page, stack):
    expect(page.locator("#lora-add option")).to_have_count(3)  # the prompt, ink, pencil
    page.select_option("#lora-add", "ink")
    page.select_option("#lora-add", "pencil")
    page.fill("#lora-weight-0", "0.6")
    page.click("button[aria-label='Remove LoRA pencil']")
    expect(page.locator("#lora-list li")).to_have_count(1)
    page.fill("#prompt", "a lighthouse in ink")
    page.fill("#steps", "2")
    page.select_option("#width", "256")
    page.select_option("#height", "256")
    page.click("#submit")
    expect(page.locator("#caption")).to_contain_text("LoRAs ink 0.6", timeout=60_000)
    shot(page, "11-lora")
    job = job_of(page, stack)
    assert job["params"]["loras"] == [{"name": "ink", "weight": 0.6}] and list(job["lora_hashes"]) == ["ink"]
    page.click("button[aria-label='Remove LoRA ink']")
    expect(page.locator("#lora-list li")).to_have_count(0)
    reuse(page)
    expect(page.locator("#lora-list li")).to_have_count(1)
    expect(page.locator("#lora-weight-0")).to_have_value("0.6")


def test_the_sizes_follow_the_model_an_sdxl_model_offers_its_trained_ones(page, stack):
    expect(page.locator("#size-field")).to_be_visible()
    expect(page.locator("#width")).to_have_value("512")
    page.select_option("#model", "tiny-sdxl")
    expect(page.locator("#width")).to_have_value("1024")  # SDXL's own default
    expect(page.locator("#height")).to_have_value("1024")
    expect(page.locator("#size")).to_have_value("1024x1024")
    expect(page.locator("#size option[value='832x1216']")).to_have_count(1)
    page.select_option("#size", "832x1216")
    expect(page.locator("#width")).to_have_value("832")
    expect(page.locator("#height")).to_have_value("1216")
    page.select_option("#width", "768")  # not a trained size: the picker says custom
    expect(page.locator("#size")).to_have_value("")
    page.select_option("#size", "1216x832")
    page.fill("#prompt", "a harbour at dusk")
    page.fill("#steps", "1")
    page.click("#submit")
    expect(page.locator("#caption")).to_contain_text("tiny-sdxl", timeout=60_000)
    shot(page, "12-sdxl-sizes")
    job = job_of(page, stack)
    assert (job["params"]["width"], job["params"]["height"], job["model"]) == (1216, 832, "tiny-sdxl")
    page.select_option("#model", "tiny")
    expect(page.locator("#width")).to_have_value("512")
