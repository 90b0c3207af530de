"""A model published as OpenVINO IR only (the OpenVINO organisation's ``*-int8-ov`` layout; here the tiny model
written in it, hybrid int8 as published) on the real service, through every API: no torch weights, no
conversion, int8 from the start; the native jobs with previews, the ``openai`` SDK, A1111's ``webuiapi`` client
(image-to-image and inpainting on the IR's VAE encoder), a switch to a torch model and back, and what only torch
weights can run refused at submit with the field to change."""

from __future__ import annotations

import io
from urllib.parse import urlparse

import numpy as np
import openai
import pytest
import requests
import webuiapi
from PIL import Image

from tests.helpers import wait_until
from tests.integration.conftest import start_stack, stop_stack

pytestmark = pytest.mark.slow
SMALL = {"steps": 3, "width": 64, "height": 64}


@pytest.fixture(scope="module")
def stack(log_dir, tiny_model_dir, tiny_ir_model_dir, tiny_lora_dir):
    stack = start_stack(log_dir, tiny_model_dir, {"GATEWAY_WORKERS": 1}, SD_MODEL=tiny_ir_model_dir,
                        SD_MODELS=f"torch-tiny={tiny_model_dir}", LORA_DIR=tiny_lora_dir, SD_DEFAULT_SIZE=64,
                        SD_LCM_LORA="none")
    yield stack
    stop_stack(stack)
    assert "Traceback" not in stack.gateway.log() and "Traceback" not in stack.model_server.log()


def submit(stack, body: dict) -> requests.Response:
    return requests.post(stack.url + "/v1/jobs", json=body, timeout=30)


def finished(stack, job_id: str) -> dict:
    def done():
        job = requests.get(f"{stack.url}/v1/jobs/{job_id}", timeout=5).json()
        return job if job["state"] in ("succeeded", "failed") else None

    return wait_until(done, 60, 0.1, f"job {job_id}")


def test_health_and_the_model_list_say_it_runs_as_published(stack):
    health = requests.get(stack.url + "/health", timeout=10).json()
    opts = health["optimizations"]
    assert opts["weights"] == "OpenVINO IR (no torch weights)" and opts["openvino_int8"] == "hybrid"
    assert opts["backend"] == "openvino" and opts["openvino_vae"] == "decode and encode"
    assert "openvino_ir" not in opts and "conversion_seconds" not in opts  # nothing was converted
    models = {m["id"]: m for m in requests.get(stack.url + "/v1/models", timeout=10).json()["data"]}
    ir = models["tiny-sd-int8-ov"]
    assert ir["family"] == "sd1" and ir["loaded"] and "fast" in ir["unavailable_presets"]


def test_a_native_job_with_previews_runs_int8_and_says_so(stack):
    response = submit(stack, {"prompt": "a cat", "n": 2, "preview": True, "seed": 4, **SMALL})
    assert response.status_code == 202, response.text
    job = finished(stack, response.json()["id"])
    assert job["state"] == "succeeded" and len(job["images"]) == 2
    assert job["engine"].startswith("openvino ") and job["engine"].endswith("int8 (hybrid)")
    image = requests.get(stack.url + job["images"][0]["url"], timeout=10)
    assert Image.open(io.BytesIO(image.content)).size == (64, 64)
    balanced = finished(stack, submit(stack, {"prompt": "a cat", "preset": "balanced", **SMALL}).json()["id"])
    assert balanced["state"] == "succeeded" and "every step" in balanced["engine"]


@pytest.mark.parametrize("body, field", [
    ({"loras": [{"name": "ink", "weight": 0.8}]}, "loras"), ({"prompt": "a cat <lora:ink:0.8>"}, "loras"),
    ({"token_merging": 0.5}, "token_merging"), ({"tiling": True}, "tiling"), ({"width": 72}, "width"),
    ({"preset": "fast"}, "preset")])
def test_what_needs_torch_weights_is_refused_at_submit_with_the_field(stack, body, field):
    response = submit(stack, {"prompt": "a cat", **SMALL, **body})
    assert response.status_code == 400, response.text
    error = response.json()
    assert error["field"] == field, error
    assert error["hint"] and ("OpenVINO IR only" in error["error"] or field == "preset")


def test_the_openai_sdk_and_a_switch_to_a_torch_model_and_back(stack):
    client = openai.OpenAI(base_url=f"{stack.url}/v1", api_key="any-key", max_retries=0)
    first = client.images.generate(prompt="a cat", size="64x64", extra_body={"seed": 1, "steps": 2})
    torch_model = client.images.generate(prompt="a cat", size="64x64", model="torch-tiny",
                                         extra_body={"seed": 1, "steps": 2})
    again = client.images.generate(prompt="a cat", size="64x64", extra_body={"seed": 1, "steps": 2})
    assert first.data[0].b64_json == again.data[0].b64_json != torch_model.data[0].b64_json
    styled = submit(stack, {"prompt": "a cat <lora:ink:0.8>", "model": "torch-tiny", **SMALL})
    assert styled.status_code == 202  # the torch model beside it takes LoRAs


def test_the_webuiapi_client_paints_with_the_irs_vae_encoder(stack):
    url = urlparse(stack.url)
    api = webuiapi.WebUIApi(host=url.hostname, port=url.port)
    assert api.txt2img(prompt="a cat", seed=9, sampler_name="Euler a", **SMALL).image.size == (64, 64)
    init = Image.new("RGB", (64, 64), (20, 200, 30))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))
    painted = api.img2img(images=[init], mask_image=mask, prompt="a cat", denoising_strength=0.9, seed=3, **SMALL)
    pixels = np.asarray(painted.image.convert("RGB")).astype(int)
    assert np.abs(pixels[:, 48:] - np.asarray(init)[:, 48:]).max() == 0  # the kept half is the original
    assert np.abs(pixels[:, :16] - np.asarray(init)[:, :16]).mean() > 5
    changed = api.img2img(images=[init], prompt="a cat", denoising_strength=0.5, seed=3, **SMALL).image
    assert np.abs(np.asarray(changed.convert("RGB")).astype(int) - np.asarray(init)).mean() > 1
