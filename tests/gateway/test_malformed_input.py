"""Hostile and sloppy bodies get a 400 in each route family's shape, never a 500 or a traceback."""

from __future__ import annotations

import pytest

GENERATION_ROUTES = ["/generate", "/v1/jobs", "/v1/images/generations", "/sdapi/v1/txt2img", "/sdapi/v1/img2img"]
BAD_BODIES = {
    "invalid utf-8 in a string": b'{"prompt":"\xff"}',
    "nested 2,000 deep": b'{"prompt":' + b"[" * 2000 + b"]" * 2000 + b"}",
    "a bare array nested 2,000 deep": b"[" * 2000 + b"]" * 2000,
    "not json": b"prompt=a cat",
    "a string": b'"a cat"',
}


def _shape_of(path: str, response) -> str:
    body = response.get_json()
    if path.startswith("/sdapi/"):
        assert response.status_code == 422 and body["detail"][0]["loc"][0] == "body"
        return body["detail"][0]["msg"]
    assert response.status_code == 400
    if path.startswith("/v1/images/"):
        return body["error"]["message"]
    assert body["code"] in ("invalid_json", "invalid_params") and body["hint"]
    return body["error"]


@pytest.mark.parametrize("path", GENERATION_ROUTES)
@pytest.mark.parametrize("name", BAD_BODIES)
def test_hostile_bodies_are_client_errors_on_every_generation_route(client, fake, path, name):
    response = client.post(path, data=BAD_BODIES[name], content_type="application/json")
    assert "Traceback" not in response.get_data(as_text=True)
    assert _shape_of(path, response)
    assert not fake.submitted


def test_a1111_options_refuses_invalid_json_and_accepts_an_object(client):
    assert client.post("/sdapi/v1/options", data=b"garbage{", content_type="application/json").status_code == 422
    assert client.post("/sdapi/v1/options", data=b"[1, 2]", content_type="application/json").status_code == 422
    assert client.post("/sdapi/v1/options", json={"samples_format": "jpg"}).status_code == 200  # ignored
    unknown = client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "x"})
    assert unknown.status_code == 422 and "fake-model" in unknown.get_json()["detail"][0]["msg"]
    assert client.post("/sdapi/v1/options", json={"sd_model_checkpoint": 5}).status_code == 422
    assert client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "fake-model"}).status_code == 200


def test_whole_number_floats_are_taken_as_integers_as_json_schema_allows(client, fake):
    response = client.post("/v1/jobs", json={"prompt": "a cat", "quality": 13.0, "n": 3.0, "steps": 20.0,
                                            "format": "jpeg", "width": 256.0})
    assert response.status_code == 202, response.get_json()
    params = fake.submitted[-1][0]
    assert (params.quality, params.n, params.steps, params.width) == (13, 3, 20, 256)
    assert isinstance(params.n, int)
    bad = client.post("/v1/jobs", json={"prompt": "a cat", "n": 2.5}).get_json()
    assert bad["field"] == "n"


def test_a_405_says_which_methods_are_allowed(client):
    response = client.put("/v1/jobs")
    assert response.status_code == 405
    assert set(response.headers["Allow"].replace(" ", "").split(",")) >= {"POST", "OPTIONS"}


def test_cors_answers_vary_on_origin_whether_or_not_an_origin_was_sent(make_client):
    client = make_client(cors_origins=("https://app.example",))
    for headers in ({}, {"Origin": "https://app.example"}, {"Origin": "https://evil.example"}):
        assert "Origin" in client.get("/health/live", headers=headers).headers.get("Vary", "")


def test_metrics_name_their_charset_once(client):
    content_type = client.get("/metrics").headers["Content-Type"]
    assert content_type.count("charset") == 1
