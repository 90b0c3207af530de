"""Presets through the real service: SD_MODEL=tiny brings its own random LCM-LoRA and TAESD."""

from __future__ import annotations

import io

import pytest
import requests
from PIL import Image

from tests.integration.conftest import stack_fixture, start_stack, stop_stack

pytestmark = pytest.mark.slow

stack = stack_fixture(SD_MODEL="tiny")


def test_every_preset_is_available_and_listed_with_the_parts_in_health(stack):
    presets = requests.get(stack.url + "/v1/presets", timeout=5).json()
    assert [(p["name"], p["available"]) for p in presets["presets"]] == [
        ("quality", True), ("balanced", True), ("fast", True), ("turbo", False)]
    assert presets["presets"][3]["unavailable_reason"] == "tiny is not a one-step model (SD-Turbo, SDXL-Turbo, SDXS)"
    opts = requests.get(stack.url + "/health", timeout=5).json()["optimizations"]
    # The automatic per-CPU choices are reported with their reasons.
    assert opts["release_idle_weights"] == "all" and opts["channels_last_reason"] and opts["dtype_reason"]
    assert "tiny-lcm-lora" in opts["lcm_lora"] and "tiny-taesd" in opts["tiny_vae"]  # loaded by the first fast job


@pytest.mark.parametrize("preset, steps, scheduler, deep_cache", [("fast", 4, "lcm", 0),
                                                                ("balanced", 20, "dpmpp_2m_karras", 3)])
def test_a_preset_request_makes_a_full_size_image_with_the_presets_settings(stack, preset, steps, scheduler,
                                                                            deep_cache):
    response = requests.post(stack.url + "/generate", json={"prompt": "a cat", "preset": preset}, timeout=120)
    assert response.status_code == 200, response.text
    assert Image.open(io.BytesIO(response.content)).size == (512, 512)
    job = requests.get(f"{stack.url}/v1/jobs/{response.headers['X-Job-Id']}", timeout=5).json()
    assert (job["params"]["preset"], job["params"]["steps"], job["params"]["scheduler"],
            job["params"]["deep_cache"]) == (preset, steps, scheduler, deep_cache)
    assert job["progress"]["total_steps"] == steps
    # The job says what ran it: balanced's DeepCache is left out on the default's OpenVINO UNet (every step there
    # is faster); fast runs on OpenVINO too, a UNet of its own with the LCM-LoRA fused in.
    opts = requests.get(stack.url + "/health", timeout=5).json()["optimizations"]
    if opts["backend"] != "openvino":
        assert job["engine"] == f"torch {opts['dtype']}"
    elif preset == "fast":
        assert job["engine"] == f"openvino {opts['dtype']}, the LCM-LoRA fused"
        assert opts["openvino_lcm_ir"] in ("made now", "cached")  # converted by the first fast job, once
    else:
        assert job["engine"] == f"openvino {opts['dtype']}, every step (the preset's step caching is for torch)"


def test_a_preset_the_server_cannot_run_is_a_400_that_says_how_to_enable_it(log_dir, tiny_model_dir):
    stack = start_stack(log_dir, tiny_model_dir, SD_MODEL="tiny", SD_LCM_LORA="none")
    try:
        listed = requests.get(stack.url + "/v1/presets", timeout=5).json()["presets"]
        assert [p["available"] for p in listed] == [True, True, False, False]  # turbo: not a one-step model
        response = requests.post(stack.url + "/generate", json={"prompt": "a cat", "preset": "fast"}, timeout=30)
        body = response.json()
        assert response.status_code == 400, body
        assert "not available" in body["error"] and "SD_LCM_LORA" in body["hint"] and "balanced" in body["hint"]
        ok = requests.post(stack.url + "/generate", json={"prompt": "a cat", "preset": "balanced", "steps": 2},
                           timeout=60)
        assert ok.status_code == 200
    finally:
        stop_stack(stack)
    assert "Traceback" not in stack.model_server.log()
