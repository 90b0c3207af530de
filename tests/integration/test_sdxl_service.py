"""The SDXL family on the real service, through every API: ``tiny-sdxl`` (SDXL's exact pipeline
classes, random weights) as the default model, ``tiny-sdxl-turbo``, the SD 1.x ``tiny`` and an SDXL
single-file checkpoint beside it, an SDXL LoRA in LORA_DIR. Native jobs, the ``openai`` SDK and A1111's
``webuiapi`` client; the page's size choices are checked in tests/browser/test_models_page.py."""

from __future__ import annotations

import base64
import io

import numpy as np
import openai
import pytest
import requests
import webuiapi
from PIL import Image

from tests.helpers import wait_until
from tests.integration.conftest import start_stack, stop_stack

pytestmark = pytest.mark.slow
SMALL = {"steps": 2, "width": 64, "height": 64}


@pytest.fixture(scope="module")
def stack(log_dir, tiny_model_dir, tmp_path_factory):
    from model_server.engine.tiny_model import write_random_lora
    from model_server.engine.tiny_sdxl import build_tiny_sdxl

    from bench.ldm_checkpoint import write_ldm_checkpoint
    from model_server.engine.tiny_sdxl import write_tiny_sdxl

    loras = tmp_path_factory.mktemp("sdxl-loras")
    write_random_lora(loras / "xl-ink.safetensors", build_tiny_sdxl(), seed=1)  # kohya layout, both text encoders
    checkpoints = tmp_path_factory.mktemp("sdxl-checkpoints")
    write_ldm_checkpoint(build_tiny_sdxl(seed=3), checkpoints / "xl-merge.safetensors")  # as Civitai ships them
    config = write_tiny_sdxl(tmp_path_factory.mktemp("sdxl-config") / "tiny-sdxl")
    # One gateway worker: an A1111 client's chosen checkpoint is kept for its next call.
    stack = start_stack(log_dir, tiny_model_dir, {"GATEWAY_WORKERS": 1}, SD_MODEL="tiny-sdxl",
                        SD_MODELS="tiny-sdxl-turbo,tiny", SD_MODELS_DIR=checkpoints, LORA_DIR=loras,
                        SD_SINGLE_FILE_CONFIG=f"sd1={tiny_model_dir},sdxl={config}", SD_BACKEND="torch")
    yield stack
    stop_stack(stack)
    assert "Traceback" not in stack.gateway.log() and "Traceback" not in stack.model_server.log()


def post(stack, path: str, body: dict) -> requests.Response:
    return requests.post(stack.url + path, json=body, timeout=120)


def job_of(stack, response: requests.Response) -> dict:
    return requests.get(f"{stack.url}/v1/jobs/{response.headers['X-Job-Id']}", timeout=5).json()


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def test_each_model_is_listed_with_its_family_default_size_and_trained_sizes(stack):
    models = {m["id"]: m for m in requests.get(stack.url + "/v1/models", timeout=10).json()["data"]}
    assert list(models) == ["tiny-sdxl", "tiny-sdxl-turbo", "tiny", "xl-merge"]
    xl, turbo, sd = models["tiny-sdxl"], models["tiny-sdxl-turbo"], models["tiny"]
    merge = models["xl-merge"]  # a single file, told SDXL by its tensor names before it was ever loaded
    assert (merge["kind"], merge["family"], merge["default_size"]) == ("single_file", "sdxl", "1024x1024")
    assert (xl["family"], xl["default_size"], xl["one_step"]) == ("sdxl", "1024x1024", False)
    assert {"832x1216", "1216x832", "1344x768"} <= set(xl["sizes"])
    assert (turbo["family"], turbo["default_size"], turbo["one_step"]) == ("sdxl", "512x512", True)
    assert (sd["family"], sd["default_size"], sd["sizes"][0]) == ("sd1", "512x512", "512x512")
    assert "fast" not in xl["unavailable_presets"] and "turbo" in xl["unavailable_presets"]
    health = requests.get(stack.url + "/health", timeout=10).json()
    assert health["optimizations"]["family"] == "sdxl"
    assert health["optimizations"]["backend_reason"] == "configured"


def test_a_request_without_a_size_gets_the_models_own_and_the_job_says_what_ran_it(stack):
    response = post(stack, "/generate", {"prompt": "a cat", "steps": 2, "seed": 4})
    assert response.status_code == 200, response.text
    assert Image.open(io.BytesIO(response.content)).size == (1024, 1024)
    job = job_of(stack, response)
    dtype = requests.get(stack.url + "/health", timeout=10).json()["optimizations"]["dtype"]
    assert job["engine"] == f"torch {dtype}" and job["params"]["width"] == 1024
    turbo = post(stack, "/generate", {"prompt": "a cat", "model": "tiny-sdxl-turbo", "seed": 4})
    assert Image.open(io.BytesIO(turbo.content)).size == (512, 512)
    turbo_job = job_of(stack, turbo)
    assert turbo_job["params"]["preset"] == "turbo" and turbo_job["params"]["steps"] == 1


def test_sdxl_runs_negative_prompts_seeds_n_and_the_fast_preset(stack):
    a = post(stack, "/generate", {"prompt": "a cat", "negative_prompt": "blurry", "seed": 5, **SMALL})
    b = post(stack, "/generate", {"prompt": "a cat", "negative_prompt": "blurry", "seed": 5, **SMALL})
    c = post(stack, "/generate", {"prompt": "a cat", "seed": 5, **SMALL})
    assert a.content == b.content != c.content
    fast = post(stack, "/generate", {"prompt": "a cat", "preset": "fast", "seed": 5, **SMALL})
    assert fast.status_code == 200, fast.text
    job = job_of(stack, fast)
    health = requests.get(stack.url + "/health", timeout=10).json()["optimizations"]
    assert job["params"]["scheduler"] == "lcm" and job["engine"] == f"torch {health['dtype']}"
    assert health["lcm_lora"].endswith("tiny-lcm-lora") and health["tiny_vae"].endswith("tiny-taesd")
    batch = post(stack, "/v1/jobs", {"prompt": "a cat", "n": 2, "preview": True, **SMALL}).json()

    def finished():
        job = requests.get(f"{stack.url}/v1/jobs/{batch['id']}", timeout=5).json()
        return job if job["state"] == "succeeded" else None

    assert len(wait_until(finished, 60, 0.2, "the batch")["images"]) == 2


def test_img2img_inpaint_and_a_lora_on_sdxl(stack):
    init = Image.new("RGB", (64, 64), (220, 30, 30))
    body = {"prompt": "a cat", "init_image": base64.b64encode(png(init)).decode(), "strength": 0.6, "seed": 2,
            "steps": 4, "width": 64, "height": 64}
    img2img = post(stack, "/generate", body)
    assert img2img.status_code == 200 and job_of(stack, img2img)["params"]["mode"] == "img2img"
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))
    painted = post(stack, "/generate", {**body, "mask": base64.b64encode(png(mask)).decode(), "strength": 0.9})
    pixels = np.asarray(Image.open(io.BytesIO(painted.content)).convert("RGB")).astype(int)
    assert np.abs(pixels[:, 48:] - np.asarray(init)[:, 48:]).max() == 0  # the kept half is the original
    assert np.abs(pixels[:, :16] - np.asarray(init)[:, :16]).mean() > 5
    plain = post(stack, "/generate", {"prompt": "a cat", "seed": 6, **SMALL})
    styled = post(stack, "/generate", {"prompt": "a cat <lora:xl-ink:0.8>", "seed": 6, **SMALL})
    assert styled.status_code == 200 and styled.content != plain.content
    assert "xl-ink" in Image.open(io.BytesIO(styled.content)).text["parameters"]


def test_the_openai_sdk_gets_sdxls_trained_sizes_for_openais_own(stack):
    client = openai.OpenAI(base_url=f"{stack.url}/v1", api_key="any-key", max_retries=0)

    def size(**kw):
        result = client.images.generate(prompt="a cat", extra_body={"seed": 1, "steps": 1}, **kw)
        return Image.open(io.BytesIO(base64.b64decode(result.data[0].b64_json))).size

    assert size(size="1024x1536") == (832, 1216)  # the nearest trained shape
    assert size(size="1536x1024") == (1216, 832)
    assert size(size="1024x1024", model="tiny-sdxl-turbo") == (512, 512)  # a 512 model's square
    assert size(size="auto", model="tiny-sdxl-turbo") == (512, 512)
    assert size(size="96x64") == (96, 64)  # a size of our own is taken as given
    assert size(size="1024x1024", model="tiny") == (512, 512)


def test_the_webuiapi_client_runs_sdxl_and_switches_between_families(stack):
    from urllib.parse import urlparse

    url = urlparse(stack.url)
    api = webuiapi.WebUIApi(host=url.hostname, port=url.port)
    titles = [m["title"] for m in api.get_sd_models()]
    assert titles == ["tiny-sdxl", "tiny-sdxl-turbo", "tiny", "xl-merge"]
    base = api.txt2img(prompt="a cat", seed=9, sampler_name="DPM++ 2M", scheduler="Karras", **SMALL)
    assert base.image.size == (64, 64) and "Model: tiny-sdxl" in base.info["infotexts"][0]
    init = Image.new("RGB", (64, 64), (20, 200, 30))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))
    painted = api.img2img(images=[init], mask_image=mask, prompt="a cat", denoising_strength=0.9, seed=3,
                          **{**SMALL, "steps": 4})
    assert np.abs(np.asarray(painted.image.convert("RGB")).astype(int)[:, 48:] - np.asarray(init)[:, 48:]).max() == 0
    for model in ("tiny", "tiny-sdxl-turbo", "xl-merge"):
        api.util_set_model(model)
        try:
            result = api.txt2img(prompt="a cat", seed=9, steps=1, cfg_scale=0, width=64, height=64)
            assert result.info["sd_model_name"] == model
        finally:
            api.util_set_model("tiny-sdxl")
    merge = next(m for m in api.get_sd_models() if m["model_name"] == "xl-merge")
    assert len(merge["hash"]) == 10  # A1111's short hash, known once it was converted
    again = api.txt2img(prompt="a cat", seed=9, sampler_name="DPM++ 2M", scheduler="Karras", **SMALL)
    assert np.array_equal(np.asarray(again.image), np.asarray(base.image))  # back on SDXL, the same image
