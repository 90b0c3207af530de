"""The official ``openai`` SDK, unchanged, against the real service."""

from __future__ import annotations

import base64
import io

import numpy as np
import openai
import pytest
import requests
from PIL import Image

pytestmark = pytest.mark.slow


@pytest.fixture
def client(stack):
    return openai.OpenAI(base_url=f"{stack.url}/v1", api_key="any-key", max_retries=0)


def decode(item) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(item.b64_json)))


def pixels(response, index=0):
    return np.asarray(decode(response.data[index]))


def test_b64_images_decode_at_the_requested_size_and_n_gives_distinct_images(client):
    response = client.images.generate(prompt="a cat", size="96x64", n=2, response_format="b64_json",
                                      extra_body={"steps": 2})
    assert isinstance(response.created, int)
    assert [decode(d).size for d in response.data] == [(96, 64), (96, 64)]
    assert not np.array_equal(pixels(response, 0), pixels(response, 1))


def test_the_same_seed_gives_the_same_pixels_and_another_seed_does_not(client):
    def make(seed):
        return pixels(client.images.generate(prompt="a red cube", size="64x64",
                                             extra_body={"seed": seed, "steps": 2}))

    assert np.array_equal(make(11), make(11))
    assert not np.array_equal(make(11), make(12))


def test_url_responses_point_at_a_fetchable_image(client):
    response = client.images.generate(prompt="a cat", size="64x64", response_format="url", model="dall-e-2",
                                      quality="standard", style="vivid", user="tester", extra_body={"steps": 2})
    fetched = requests.get(response.data[0].url, timeout=10)
    assert fetched.status_code == 200
    assert Image.open(io.BytesIO(fetched.content)).size == (64, 64)


def test_our_fast_preset_passes_through_extra_body(client, stack):
    response = client.images.generate(prompt="a cat", size="64x64", quality="high", response_format="url",
                                      extra_body={"preset": "fast"})
    job_id = response.data[0].url.split("/v1/jobs/")[1].split("/")[0]
    params = requests.get(f"{stack.url}/v1/jobs/{job_id}", timeout=5).json()["params"]
    assert (params["preset"], params["steps"], params["scheduler"]) == ("fast", 4, "lcm")


def test_step_caching_and_token_merging_pass_through_extra_body(client, stack):
    response = client.images.generate(prompt="a cat", size="64x64", response_format="url",
                                      extra_body={"steps": 3, "deep_cache": 2, "token_merging": 0.5})
    job_id = response.data[0].url.split("/v1/jobs/")[1].split("/")[0]
    params = requests.get(f"{stack.url}/v1/jobs/{job_id}", timeout=5).json()["params"]
    assert (params["deep_cache"], params["token_merging"]) == (2, 0.5)


@pytest.mark.parametrize("kwargs, param", [
    ({"size": "banana"}, "size"), ({"size": "100x100"}, "size"), ({"size": "4096x4096"}, "size"),
    ({"n": 0}, "n"), ({"n": 50}, "n"), ({"response_format": "gif"}, "response_format"),
    ({"prompt": "x" * 201}, "prompt"), ({"prompt": ""}, "prompt"), ({"quality": "ultra"}, "quality"),
    ({"output_compression": 200}, "output_compression"), ({"output_compression": -1}, "output_compression"),
])
def test_invalid_requests_raise_bad_request_with_a_populated_message(client, kwargs, param):
    with pytest.raises(openai.BadRequestError) as info:
        client.images.generate(**({"prompt": "a cat"} | kwargs))
    error = info.value
    assert error.status_code == 400 and error.param == param and error.code
    assert error.message.startswith("Error code: 400 - ") and len(error.message) > 30


def test_models_lists_the_models_and_a_model_and_loras_can_be_chosen(client, stack):
    models = client.models.list()
    assert [m.id for m in models.data] == [stack.model_env["SD_MODEL"], "tiny-turbo"]
    assert client.models.retrieve("tiny-turbo").one_step is True
    size = {"size": "64x64", "response_format": "b64_json"}
    plain = client.images.generate(prompt="a cat", extra_body={"seed": 3, "steps": 2}, **size)
    dalle = client.images.generate(prompt="a cat", model="dall-e-2", extra_body={"seed": 3, "steps": 2}, **size)
    styled = client.images.generate(prompt="a cat", extra_body={"seed": 3, "steps": 2,
                                                                "loras": [{"name": "ink", "weight": 0.8}]}, **size)
    tagged = client.images.generate(prompt="a cat <lora:ink:0.8>", extra_body={"seed": 3, "steps": 2}, **size)
    turbo = client.images.generate(prompt="a cat", model="tiny-turbo", extra_body={"seed": 3}, **size)
    assert plain.data[0].b64_json == dalle.data[0].b64_json  # OpenAI's own names mean the default model
    assert styled.data[0].b64_json == tagged.data[0].b64_json != plain.data[0].b64_json
    assert turbo.data[0].b64_json not in (plain.data[0].b64_json, styled.data[0].b64_json)
    with pytest.raises(openai.BadRequestError) as info:
        client.images.generate(prompt="a cat", model="sd-xl-9000", **size)
    assert "unknown model 'sd-xl-9000'" in info.value.message and "tiny-turbo" in info.value.message


def _png(img: Image.Image) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, "PNG")
    return buffer.getvalue()


def test_edit_with_a_mask_repaints_only_its_transparent_part(client, stack):
    init = Image.new("RGB", (64, 64), (220, 30, 30))
    mask = Image.new("RGBA", (64, 64), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, 0, 32, 64))  # transparent left half: repaint it
    result = client.images.edit(image=("cat.png", _png(init)), mask=("mask.png", _png(mask)), prompt="a cat",
                                size="64x64", n=1, extra_body={"steps": 4, "strength": 0.9, "seed": 5})
    edited = np.asarray(decode(result.data[0]).convert("RGB")).astype(int)
    assert edited.shape == (64, 64, 3)
    assert np.abs(edited[:, 48:] - np.asarray(init)[:, 48:]).max() == 0  # the opaque half is kept as it was
    assert np.abs(edited[:, :16] - np.asarray(init)[:, :16]).mean() > 5
    # Repainted by the inpainting checkpoint, loaded for the first inpaint job.
    health = requests.get(stack.url + "/health", timeout=10).json()
    assert health["optimizations"]["inpaint_model"].endswith("tiny-inpaint")


def test_edit_without_a_mask_uses_the_images_own_transparency(client):
    init = Image.new("RGBA", (64, 64), (30, 30, 220, 255))
    init.paste((30, 30, 220, 0), (32, 0, 64, 64))  # transparent right half (the left is kept)
    result = client.images.edit(image=("cat.png", _png(init)), prompt="a cat", size="64x64",
                                extra_body={"steps": 4, "strength": 0.9, "seed": 5})
    edited = np.asarray(decode(result.data[0]).convert("RGB")).astype(int)
    assert np.abs(edited[:, :16] - np.asarray(init.convert("RGB"))[:, :16]).max() == 0


def test_edit_errors_come_in_openais_shape_naming_openais_fields(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.edit(image=("cat.png", b"not an image"), prompt="a cat", size="64x64")
    assert "cannot be read" in caught.value.message and caught.value.param == "image"
    assert "init" not in caught.value.message


@pytest.mark.parametrize("image, mask, param", [(b"", None, "image"), ("PNG", b"", "mask")])
def test_an_empty_image_or_mask_file_is_refused_never_text_to_image(client, image, mask, param):
    init = _png(Image.new("RGB", (64, 64)))
    files = {"image": ("cat.png", init if image == "PNG" else image)}
    if mask is not None:
        files["mask"] = ("mask.png", mask)
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.edit(**files, prompt="a cat", size="64x64")
    assert caught.value.param == param and "empty" in caught.value.message


def test_a_mask_of_another_size_than_the_image_is_refused_as_openai_does(client):
    init = _png(Image.new("RGBA", (64, 64)))
    mask = _png(Image.new("RGBA", (32, 64)))
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.edit(image=("cat.png", init), mask=("mask.png", mask), prompt="a cat", size="64x64")
    assert caught.value.param == "mask" and "same size" in caught.value.message


def test_a_streamed_generation_sends_its_partial_images_then_the_image(client):
    events = list(client.images.generate(prompt="a lighthouse", size="128x128", stream=True, partial_images=2,
                                         quality="low", extra_body={"steps": 40, "seed": 3}))
    kinds = [e.type for e in events]
    assert kinds == ["image_generation.partial_image"] * 2 + ["image_generation.completed"], kinds
    assert [e.partial_image_index for e in events[:2]] == [0, 1]
    partial = Image.open(io.BytesIO(base64.b64decode(events[0].b64_json)))
    assert partial.format == "JPEG" and events[0].size == f"{partial.width}x{partial.height}" == "16x16"
    done = events[-1]
    assert decode(done).size == (128, 128) and done.size == "128x128" and done.output_format == "png"
    assert done.usage.total_tokens == 0 and done.quality == "low" and isinstance(done.created_at, int)
    same = client.images.generate(prompt="a lighthouse", size="128x128", quality="low",
                                  extra_body={"steps": 40, "seed": 3})
    assert np.array_equal(pixels(same), np.asarray(decode(done)))  # streaming changes nothing in the image


def test_a_stream_without_partial_images_sends_each_image_once(client):
    events = list(client.images.generate(prompt="a cat", size="64x64", n=2, stream=True,
                                         extra_body={"steps": 2}))
    assert [e.type for e in events] == ["image_generation.completed"] * 2
    assert not np.array_equal(np.asarray(decode(events[0])), np.asarray(decode(events[1])))


def test_a_streamed_edit_sends_image_edit_events(client):
    init = Image.new("RGB", (64, 64), (200, 40, 40))
    events = list(client.images.edit(image=("cat.png", _png(init)), prompt="a cat", size="64x64", stream=True,
                                     partial_images=1, extra_body={"steps": 40, "strength": 1.0}))
    assert [e.type for e in events] == ["image_edit.partial_image", "image_edit.completed"]


def test_a_job_cancelled_mid_stream_raises_in_the_sdk(client, stack):
    raw = client.images.with_raw_response.generate(prompt="a cat", size="128x128", stream=True, partial_images=3,
                                                   extra_body={"steps": 100})
    job_id = raw.headers["x-job-id"]
    with pytest.raises(openai.APIError, match="cancelled"):
        for event in raw.parse():
            if event.type.endswith("partial_image"):
                requests.delete(f"{stack.url}/v1/jobs/{job_id}", headers={"Authorization": "Bearer any-key"},
                                timeout=5)


def test_a_stream_client_that_goes_away_cancels_its_job(stack):
    import time

    body = {"prompt": "a cat", "size": "512x512", "n": 2, "stream": True, "partial_images": 3, "steps": 100}
    with requests.post(f"{stack.url}/v1/images/generations", json=body, stream=True, timeout=30) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        job_id = response.headers["x-job-id"]
        next(line for line in response.iter_lines() if line.startswith(b"event: image_generation.partial_image"))
    for _ in range(100):
        job = requests.get(f"{stack.url}/v1/jobs/{job_id}", timeout=5).json()
        if job["state"] != "running":
            break
        time.sleep(0.1)
    assert job["state"] == "cancelled" and len(job["images"]) < 2, job  # a few seconds' work, stopped early


@pytest.mark.parametrize("extra, param", [({"partial_images": 2}, "partial_images"),
                                          ({"stream": True, "partial_images": 4}, "partial_images")])
def test_partial_images_out_of_bounds_or_without_stream_are_openai_400s(client, extra, param):
    with pytest.raises(openai.BadRequestError) as error:
        client.images.generate(prompt="a cat", size="64x64", **extra)
    assert error.value.param == param
