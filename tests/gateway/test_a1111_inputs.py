"""A1111 requests at the gateway: what A1111's models coerce is taken, what they would refuse (or
what means nothing) is a 422 in FastAPI's shape, and a request naming no sampler leaves the choice
to the preset (or a one-step model's turbo preset)."""

from __future__ import annotations

import base64
import io
import json

import pytest
from PIL import Image

from protocol.presets import PRESETS


def _png() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64)).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.mark.parametrize("body, field", [({"n_iter": 0}, "n_iter"), ({"batch_size": 0}, "batch_size"),
                                         ({"seed": -2}, "seed"), ({"denoising_strength": 1.5}, "denoising_strength"),
                                         ({"steps": "many"}, "steps")])
def test_what_a1111_would_refuse_or_not_run_is_a_422_naming_the_field(client, fake, body, field):
    response = client.post("/sdapi/v1/txt2img", json={"prompt": "a cat", **body})
    assert response.status_code == 422, response.get_json()
    assert response.get_json()["detail"][0]["loc"] == ["body", field]
    assert not fake.submitted


def test_booleans_and_integers_are_coerced_as_a1111s_models_do(client, fake):
    response = client.post("/sdapi/v1/img2img", json={"prompt": "a cat", "init_images": [_png()], "mask": _png(),
                                                      "inpainting_mask_invert": True, "tiling": 1, "steps": "4",
                                                      "seed": 5.0})
    assert response.status_code == 200, response.get_json()
    params, _, _ = fake.submitted[-1]
    assert (params.tiling, params.steps, params.seed, params.mode) == (True, 4, 5, "inpaint")
    assert list(fake.masks.values())[-1][1] == "inverted"  # black repaints, as A1111's invert means
    client.post("/sdapi/v1/img2img", json={"prompt": "a cat", "init_images": [_png()], "mask": _png(),
                                           "inpainting_mask_invert": 0})
    assert list(fake.masks.values())[-1][1] == "luminance"


def test_without_a_sampler_the_preset_chooses_and_info_names_its_sampler(make_client, fake):
    client = make_client(default_preset="balanced")
    response = client.post("/sdapi/v1/txt2img", json={"prompt": "a cat"})
    params = fake.submitted[-1][0]
    assert params.scheduler == PRESETS["balanced"].scheduler and params.preset == "balanced"
    assert json.loads(response.get_json()["info"])["sampler_name"] == "DPM++ 2M Karras"
    client.post("/sdapi/v1/txt2img", json={"prompt": "a cat", "sampler_name": "Euler"})
    assert fake.submitted[-1][0].scheduler == "euler"  # a sampler named still wins


def test_a_one_step_model_keeps_its_turbo_preset_when_no_sampler_is_named(client, fake):
    client.post("/sdapi/v1/txt2img", json={"prompt": "a cat",
                                           "override_settings": {"sd_model_checkpoint": "fake-turbo"}})
    params = fake.submitted[-1][0]
    assert params.preset == "turbo" and params.scheduler == PRESETS["turbo"].scheduler
    assert params.steps == PRESETS["turbo"].steps and params.guidance_scale == PRESETS["turbo"].guidance_scale


def test_options_are_a1111s_keys_with_its_defaults_and_writes_are_per_client(client, fake):
    options = client.get("/sdapi/v1/options").get_json()
    assert options["send_seed"] is True and options["samples_format"] == "png"
    assert options["CLIP_stop_at_last_layers"] == 1 and options["sd_vae"] == "Automatic"
    assert client.post("/sdapi/v1/options", json={"samples_format": "jpg", "no_such_key": 1}).status_code == 200
    assert client.get("/sdapi/v1/options").get_json()["samples_format"] == "jpg"
    other = client.get("/sdapi/v1/options", environ_base={"REMOTE_ADDR": "10.0.0.9"}).get_json()
    assert other["samples_format"] == "png"
    client.post("/sdapi/v1/txt2img", json={"prompt": "a cat"})
    assert fake.submitted[-1][0].format == "jpeg"  # honoured on this client's later images
    for bad in ({"send_seed": "yes"}, {"jpeg_quality": True}, {"samples_format": "gif"}):
        assert client.post("/sdapi/v1/options", json=bad).status_code == 422
