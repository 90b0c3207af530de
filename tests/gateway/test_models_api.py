"""Model and LoRA selection through the gateway (a scripted model client): listing, the native
fields, A1111's prompt tags and per-client checkpoint, OpenAI's model names."""

from __future__ import annotations

import pytest

from gateway.params import lora_tags
from gateway.errors import ApiError


@pytest.mark.parametrize("prompt, clean, loras", [
    ("a cat <lora:ink:0.7>", "a cat  ", [{"name": "ink", "weight": 0.7}]),
    ("<lora:ink> a cat", "  a cat", [{"name": "ink", "weight": 1.0}]),
    ("a <LoRA:my style:-0.5:0.2> cat", "a   cat", [{"name": "my style", "weight": -0.5}]),
    ("a <lyco:x:1>", "a  ", [{"name": "x", "weight": 1.0}]),
    ("no tags <b>", "no tags <b>", []),
])
def test_lora_tags_are_read_out_of_the_prompt(prompt, clean, loras):
    assert lora_tags(prompt) == (clean, loras)


def test_a_tag_with_a_bad_weight_is_a_400_with_the_syntax():
    with pytest.raises(ApiError) as info:
        lora_tags("a <lora:ink:heavy>")
    assert info.value.status == 400 and "<lora:NAME:WEIGHT>" in info.value.hint


def test_native_model_and_loras_reach_the_model_server(client, fake):
    response = client.post("/v1/jobs", json={"prompt": "a cat <lora:ink:0.5> <lora:pencil>", "model": "fake-model",
                                             "loras": [{"name": "pencil", "weight": 0.25}]})
    assert response.status_code == 202, response.get_json()
    params = fake.jobs[response.get_json()["id"]].params
    assert params.prompt == "a cat" and params.model == "fake-model"
    assert [(r.name, r.weight) for r in params.loras] == [("pencil", 0.25), ("ink", 0.5)]


@pytest.mark.parametrize("body, field", [
    ({"loras": [{"name": "a", "weight": 5}]}, "loras"),
    ({"loras": [{"name": ""}]}, "loras"),
    ({"loras": [{"name": "a<b"}]}, "loras"),
    ({"loras": "ink"}, "loras"),
    ({"prompt": "x " + " ".join(f"<lora:l{i}>" for i in range(9))}, "loras"),
    ({"model": "x" * 201}, "model"),
    ({"model": "bad\u0007name"}, "model"),
])
def test_bad_model_and_lora_fields_are_400s(client, fake, body, field):
    response = client.post("/v1/jobs", json={"prompt": "a cat", **body})
    assert response.status_code == 400 and response.get_json()["field"] == field, response.get_json()
    assert fake.submitted == []


def test_a_one_step_model_gets_the_turbo_preset_unless_another_is_asked_for(client, fake):
    turbo = client.post("/v1/jobs", json={"prompt": "a cat", "model": "fake-turbo"}).get_json()
    params = fake.jobs[turbo["id"]].params
    assert (params.preset, params.steps, params.guidance_scale) == ("turbo", 1, 0.0)
    asked = client.post("/v1/jobs", json={"prompt": "a cat", "model": "fake-turbo", "preset": "quality"}).get_json()
    assert fake.jobs[asked["id"]].params.preset == "quality"
    plain = client.post("/v1/jobs", json={"prompt": "a cat"}).get_json()
    assert fake.jobs[plain["id"]].params.preset == "quality"


def test_the_listings(client):
    models = client.get("/v1/models").get_json()
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == ["fake-model", "fake-turbo"]
    assert models["data"][1]["one_step"] and models["data"][0]["loaded"]
    assert client.get("/v1/models/fake-turbo").get_json()["id"] == "fake-turbo"
    missing = client.get("/v1/models/none")
    assert missing.status_code == 404 and missing.get_json()["error"]["param"] == "model"
    assert client.get("/v1/loras").get_json() == {"loras": [
        {"name": "style", "file": "style.safetensors", "size_bytes": 10, "hash": None, "loaded": False}]}
    assert client.get("/sdapi/v1/loras").get_json() == [{"name": "style", "alias": "style",
                                                         "path": "style.safetensors", "metadata": {}}]
    assert [m["title"] for m in client.get("/sdapi/v1/sd-models").get_json()] == ["fake-model", "fake-turbo"]
    assert client.post("/sdapi/v1/refresh-checkpoints").status_code == 200


def test_openai_model_names_mean_the_default_and_ours_are_passed_on(client, fake):
    for model, expected in (("dall-e-2", ""), ("gpt-image-1", ""), (None, ""), ("fake-turbo", "fake-turbo")):
        body = {"prompt": "a cat", "size": "64x64", **({"model": model} if model else {})}
        assert client.post("/v1/images/generations", json=body).status_code == 200
        assert list(fake.jobs.values())[-1].params.model == expected, model


def test_each_a1111_client_keeps_its_own_checkpoint(make_client, fake):
    client = make_client(api_keys=("key-one-0123456789", "key-two-0123456789"))
    one = {"Authorization": "Bearer key-one-0123456789"}
    two = {"Authorization": "Bearer key-two-0123456789"}
    assert client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "fake-turbo"}, headers=one).status_code == 200
    assert client.get("/sdapi/v1/options", headers=one).get_json()["sd_model_checkpoint"] == "fake-turbo"
    assert client.get("/sdapi/v1/options", headers=two).get_json()["sd_model_checkpoint"] == "fake-model"
    for headers, expected in ((one, "fake-turbo"), (two, "")):
        client.post("/sdapi/v1/txt2img", json={"prompt": "a cat", "steps": 2}, headers=headers)
        assert list(fake.jobs.values())[-1].params.model == expected
    client.post("/sdapi/v1/txt2img", json={"prompt": "a cat", "steps": 2,
                                           "override_settings": {"sd_model_checkpoint": "fake-model"}}, headers=one)
    assert list(fake.jobs.values())[-1].params.model == "fake-model"


def test_a_request_without_a_size_gets_its_models_own_and_openai_sizes_map_to_its_trained_ones(client, fake):
    from protocol.messages import ModelEntry

    fake.models.append(ModelEntry(name="fake-xl", kind="folder", family="sdxl", default_width=1024,
                                  default_height=1024, sizes=["1024x1024", "1216x832", "832x1216"]))
    xl = client.post("/v1/jobs", json={"prompt": "a cat", "model": "fake-xl"}).get_json()
    assert (fake.jobs[xl["id"]].params.width, fake.jobs[xl["id"]].params.height) == (1024, 1024)
    tall = client.post("/v1/jobs", json={"prompt": "a cat", "model": "fake-xl", "height": 1216}).get_json()
    assert (fake.jobs[tall["id"]].params.width, fake.jobs[tall["id"]].params.height) == (1024, 1216)
    plain = client.post("/v1/jobs", json={"prompt": "a cat"}).get_json()
    assert fake.jobs[plain["id"]].params.width == 512  # the default model's size is unknown: DEFAULT_SIZE
    for size, expected in (("1024x1536", (832, 1216)), ("1536x1024", (1216, 832)), ("1792x1024", (1216, 832)),
                           ("1024x1024", (1024, 1024)), ("512x512", (512, 512)), ("640x480", (640, 480))):
        body = {"prompt": "a cat", "size": size, "model": "fake-xl"}
        assert client.post("/v1/images/generations", json=body).status_code == 200
        params = list(fake.jobs.values())[-1].params
        assert (params.width, params.height) == expected, size
    listed = client.get("/v1/models/fake-xl").get_json()
    assert (listed["family"], listed["default_size"], listed["sizes"][1]) == ("sdxl", "1024x1024", "1216x832")
