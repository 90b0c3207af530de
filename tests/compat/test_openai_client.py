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
