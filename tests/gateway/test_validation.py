"""Input validation: every bad request is a 400 JSON error with a hint, never a 5xx."""

from __future__ import annotations

import json

import pytest

ROUTES = ["/generate", "/v1/jobs"]


def assert_error(response, status: int, code: str | None = None):
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert set(body) >= {"error", "code", "hint"} and body["error"] and body["hint"]
    if code:
        assert body["code"] == code
    return body


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("raw, code", [
    (b"", "invalid_json"), (b"{", "invalid_json"), (b"not json", "invalid_json"),
    (b"[]", "invalid_params"), (b'"a cat"', "invalid_params"), (b"{}", "invalid_params"),
    (b'{"prompt": ""}', "invalid_params"), (b'{"prompt": "   "}', "invalid_params"),
    (b'{"prompt": null}', "invalid_params"), (b'{"prompt": 5}', "invalid_params"),
])
def test_malformed_bodies_are_400_with_a_hint(client, fake, route, raw, code):
    assert_error(client.post(route, data=raw, content_type="application/json"), 400, code)
    assert fake.submitted == []


@pytest.mark.parametrize("field, value", [
    ("steps", 0), ("steps", 101), ("steps", "25"), ("steps", 2.5), ("guidance_scale", -1), ("guidance_scale", 31),
    ("width", 513), ("width", 32), ("height", 4096), ("seed", -1), ("seed", 2**32), ("seed", True),
    ("scheduler", "nope"), ("n", 0), ("n", 5), ("format", "gif"), ("quality", 0), ("negative_prompt", 3),
])
def test_out_of_range_fields_name_the_field_and_say_what_is_allowed(client, fake, field, value):
    body = assert_error(client.post("/v1/jobs", json={"prompt": "a cat", field: value}), 400, "invalid_params")
    assert body["field"] == field
    assert fake.submitted == []


def test_the_prompt_limit_is_200_characters_by_default(client, fake):
    assert client.post("/v1/jobs", json={"prompt": "x" * 200}).status_code == 202
    body = assert_error(client.post("/generate", json={"prompt": "x" * 201}), 400, "invalid_params")
    assert "shorter prompt" in body["hint"] and "200" in body["hint"]


def test_the_prompt_limit_is_configurable(make_client):
    client = make_client(max_prompt_length=10)
    assert client.post("/v1/jobs", json={"prompt": "x" * 10}).status_code == 202
    assert_error(client.post("/v1/jobs", json={"prompt": "x" * 11}), 400)


def test_unicode_prompts_count_characters_not_bytes(client):
    assert client.post("/v1/jobs", json={"prompt": "猫" * 200}).status_code == 202


def test_defaults_fill_in_and_a_random_seed_is_always_chosen(client, fake):
    client.post("/v1/jobs", json={"prompt": "  a cat  "})
    client.post("/v1/jobs", json={"prompt": "a cat"})
    (a, _, _), (b, _, _) = fake.submitted
    assert (a.prompt, a.steps, a.width, a.height, a.guidance_scale, a.scheduler, a.n, a.format) == \
        ("a cat", 25, 512, 512, 7.5, "default", 1, "png")
    assert 0 <= a.seed < 2**32 and a.seed != b.seed


def test_null_optional_fields_mean_default_and_unknown_fields_are_ignored(client, fake):
    response = client.post("/v1/jobs", json={"prompt": "a cat", "steps": None, "seed": None, "extra": 1})
    assert response.status_code == 202
    assert fake.submitted[0][0].steps == 25


def test_a_body_over_the_limit_is_413_json(make_client):
    client = make_client(max_body_bytes=1000, max_upload_bytes=3000)
    # A route that takes an image allows it (base64: 4/3 of MAX_UPLOAD_BYTES) on top of the text limit...
    body = assert_error(client.post("/generate", data=json.dumps({"prompt": "x" * 6000}),
                                    content_type="application/json"), 413)
    assert body["hint"]
    assert client.post("/generate", data=json.dumps({"prompt": "x" * 4000}),
                       content_type="application/json").status_code == 400  # within it: too long a prompt
    # ...while text-only routes keep the small limit.
    assert client.post("/v1/images/generations", data=json.dumps({"prompt": "x" * 2000}),
                       content_type="application/json").status_code == 413


def test_form_encoded_curl_bodies_are_read_as_json(client, fake):
    # `curl -d '{"prompt": "a cat"}'` sends application/x-www-form-urlencoded.
    response = client.post("/v1/jobs", data=b'{"prompt": "a cat"}',
                           content_type="application/x-www-form-urlencoded")
    assert response.status_code == 202


def test_generate_takes_one_image_only(client):
    body = assert_error(client.post("/generate", json={"prompt": "a cat", "n": 2}), 400)
    assert "/v1/jobs" in body["hint"]


def test_control_characters_are_stripped_and_whitespace_folded(client, fake):
    response = client.post("/v1/jobs", json={"prompt": "a\x00 cat\x1b[31m\ton\nthe\u0085 mat ",
                                             "negative_prompt": "\x07blurry"})
    assert response.status_code == 202
    params = fake.submitted[0][0]
    assert params.prompt == "a cat[31m on the mat" and params.negative_prompt == "blurry"


def test_a_prompt_of_only_control_characters_is_empty(client):
    assert_error(client.post("/v1/jobs", json={"prompt": "\x00\x01\x02"}), 400, "invalid_params")
