"""The ``webuiapi`` client (AUTOMATIC1111's API), unchanged, against the real service."""

from __future__ import annotations

import threading
import time
from urllib.parse import urlparse

import numpy as np
import pytest
import requests
import webuiapi

from tests.helpers import wait_until

pytestmark = pytest.mark.slow
SMALL = {"steps": 2, "width": 64, "height": 64}


@pytest.fixture
def api(stack):
    url = urlparse(stack.url)
    return webuiapi.WebUIApi(host=url.hostname, port=url.port)


def test_txt2img_decodes_at_the_requested_size_and_reports_the_seed(api):
    result = api.txt2img(prompt="a cat", seed=1234, steps=2, width=96, height=64)
    assert result.image.size == (96, 64)
    assert result.info["seed"] == 1234 and result.info["all_seeds"] == [1234]
    assert "Seed: 1234" in result.info["infotexts"][0]
    assert result.parameters["prompt"] == "a cat"


def test_seed_minus_one_is_random_and_the_real_seed_is_reported(api):
    a = api.txt2img(prompt="a cat", seed=-1, **SMALL)
    b = api.txt2img(prompt="a cat", seed=-1, **SMALL)
    assert a.info["seed"] >= 0 and a.info["seed"] != b.info["seed"]
    again = api.txt2img(prompt="a cat", seed=a.info["seed"], **SMALL)
    assert np.array_equal(np.asarray(again.image), np.asarray(a.image))


def test_the_same_seed_gives_the_same_pixels_and_another_seed_does_not(api):
    a, b, c = (api.txt2img(prompt="a cube", seed=s, **SMALL).image for s in (5, 5, 6))
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))


def test_batch_size_and_n_iter_give_distinct_images_with_consecutive_seeds(api):
    result = api.txt2img(prompt="a cat", seed=100, batch_size=2, n_iter=2, **SMALL)
    assert len(result.images) == 4 and result.info["all_seeds"] == [100, 101, 102, 103]
    arrays = [np.asarray(i).tobytes() for i in result.images]
    assert len(set(arrays)) == 4


@pytest.mark.parametrize("sampler, scheduler", [("Euler a", "automatic"), ("DPM++ 2M", "Karras"),
                                                ("DPM++ 2M Karras", "automatic"), ("DDIM", "automatic"),
                                                ("LCM", "automatic")])
def test_a1111_sampler_names_are_understood(api, sampler, scheduler):
    result = api.txt2img(prompt="a cat", sampler_name=sampler, scheduler=scheduler, seed=1, **SMALL)
    assert result.image.size == (64, 64)
    expected = "DPM++ 2M Karras" if scheduler == "Karras" else sampler
    assert result.info["sampler_name"] == expected


def test_the_token_merging_ratio_override_setting_is_applied(api, stack):
    result = api.txt2img(prompt="a cat", seed=1, override_settings={"token_merging_ratio": 0.5}, **SMALL)
    job = requests.get(f"{stack.url}/v1/jobs/{result.info['job_id']}", timeout=5).json()
    assert result.image.size == (64, 64) and job["params"]["token_merging"] == 0.5
    assert "Token merging ratio: 0.5" in result.info["infotexts"][0]


@pytest.mark.parametrize("kwargs, fragment", [
    ({"width": 65}, "multiple of 8"), ({"steps": 0}, "steps"), ({"prompt": "x" * 201}, "too long"),
    ({"sampler_name": "Nonexistent"}, "Sampler not found"), ({"batch_size": 5}, "images"),
])
def test_invalid_requests_raise_the_clients_error_with_a_message(api, kwargs, fragment):
    with pytest.raises(RuntimeError) as info:
        api.txt2img(**({"prompt": "a cat", "steps": 2, "width": 64, "height": 64} | kwargs))
    status, text = info.value.args
    assert status in (404, 422) and fragment in text


def test_an_interrupt_from_a_second_client_ends_a_long_generation_with_a_partial_image(api, stack):
    outcome = {}
    waiter = threading.Thread(target=lambda: outcome.update(
        result=api.txt2img(prompt="long", steps=100, width=512, height=512, seed=9)))
    waiter.start()
    other = webuiapi.WebUIApi(host=urlparse(stack.url).hostname, port=urlparse(stack.url).port)
    wait_until(lambda: other.get_progress()["state"]["sampling_step"] >= 2, 60, 0.1, "generation under way")
    started = time.monotonic()
    other.interrupt()
    waiter.join(60)
    result = outcome["result"]
    assert time.monotonic() - started < 10
    assert result.image.size == (512, 512) and result.info["interrupted"] is True
    nxt = api.txt2img(prompt="next", seed=1, **SMALL)
    assert nxt.info["interrupted"] is False and nxt.image.size == (64, 64)


def test_progress_answers_within_2_s_while_a_job_runs_and_reports_idle_after(api, stack):
    waiter = threading.Thread(target=lambda: api.txt2img(prompt="busy", steps=40, width=256, height=256))
    waiter.start()
    wait_until(lambda: api.get_progress()["state"]["job"], 30, 0.05, "job running")
    for _ in range(5):
        started = time.monotonic()
        progress = api.get_progress()
        assert time.monotonic() - started < 2
        assert 0.0 <= progress["progress"] <= 1.0 and progress["state"]["sampling_steps"] == 40
    waiter.join(120)
    api.util_wait_for_ready(check_interval=0.2)
    idle = api.get_progress()
    assert idle["progress"] == 0.0 and idle["state"]["job_count"] == 0


def test_the_informational_endpoints_answer_in_a1111_shapes(api, stack):
    model = stack.model_env["SD_MODEL"]
    assert api.util_get_model_names() == sorted([model, "tiny-turbo"])
    assert api.util_get_current_model() == model
    assert {"Euler a", "DPM++ 2M", "DPM++ 2M Karras"} <= set(api.util_get_sampler_names())
    assert "karras" in api.util_get_scheduler_names()
    assert api.set_options({"sd_model_checkpoint": model}) is None
    assert api.get_scripts() == {"txt2img": [], "img2img": []}
    assert api.skip() == {} and api.interrupt() == {}  # idle: harmless
    nxt = api.txt2img(prompt="after an idle interrupt", **SMALL)
    assert nxt.info["interrupted"] is False


def test_img2img_with_and_without_a_mask(api):
    from PIL import Image

    init = Image.new("RGB", (64, 64), (220, 30, 30))
    plain = api.img2img(images=[init], prompt="a cat", denoising_strength=0.5, seed=3, **SMALL)
    assert plain.image.size == (64, 64)
    assert plain.info["denoising_strength"] == 0.5 and "Denoising strength: 0.5" in plain.info["infotexts"][0]
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))  # repaint the left half only
    painted = api.img2img(images=[init], mask_image=mask, prompt="a cat", denoising_strength=0.9, seed=3,
                          inpainting_fill=1, **{**SMALL, "steps": 4})
    pixels = np.asarray(painted.image.convert("RGB")).astype(int)
    assert np.abs(pixels[:, 48:] - np.asarray(init)[:, 48:]).max() == 0  # the right half is the original
    assert np.abs(pixels[:, :16] - np.asarray(init)[:, :16]).mean() > 5  # the left half was repainted
    assert painted.info["job_id"] and painted.info["all_seeds"] == [3]


def test_a_client_chooses_its_checkpoint_and_loras_as_with_a1111(api, stack):
    """util_set_model (POST /options) changes the client's model for its later requests (each client its
    own: tests/gateway/test_models_api.py); LoRAs by prompt tag, with A1111's infotext."""
    base = api.txt2img(prompt="a cat", seed=9, **SMALL)
    assert {lora["name"] for lora in api.get_loras()} == {"ink", "pencil"}
    styled = api.txt2img(prompt="a cat <lora:ink:0.8>", seed=9, **SMALL)
    assert not np.array_equal(np.asarray(styled.image), np.asarray(base.image))
    assert 'Lora hashes: "ink: ' in styled.info["infotexts"][0] and "<lora:ink:0.8>" in styled.info["infotexts"][0]
    api.util_set_model("tiny-turbo")
    try:
        assert api.util_get_current_model() == "tiny-turbo"
        turbo = api.txt2img(prompt="a cat", seed=9, steps=1, cfg_scale=0, width=64, height=64)
        assert turbo.info["sd_model_name"] == "tiny-turbo" and "Model: tiny-turbo" in turbo.info["infotexts"][0]
        override = api.txt2img(prompt="a cat", seed=9, override_settings={"sd_model_checkpoint":
                                                                         stack.model_env["SD_MODEL"]}, **SMALL)
        assert np.array_equal(np.asarray(override.image), np.asarray(base.image))
    finally:
        api.util_set_model(stack.model_env["SD_MODEL"])
    assert np.array_equal(np.asarray(api.txt2img(prompt="a cat", seed=9, **SMALL).image), np.asarray(base.image))
