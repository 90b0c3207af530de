"""Routes against a fake model client: shapes, statuses, headers and error mapping."""

from __future__ import annotations

import pytest

from protocol.errors import ErrorCode
from protocol.messages import ErrorInfo, JobState, ModelState
from tests.gateway.fake_client import PNG


def test_generate_returns_the_image_with_seed_and_job_headers(client, fake):
    response = client.post("/generate", json={"prompt": "a cat", "seed": 42})
    assert response.status_code == 200
    assert response.mimetype == "image/png" and response.data == PNG
    assert response.headers["X-Seed"] == "42" and response.headers["X-Job-Id"] == "job1"
    assert response.headers["X-Request-Id"]


@pytest.mark.parametrize("code, status, retry", [
    (ErrorCode.QUEUE_FULL, 429, True), (ErrorCode.NOT_READY, 503, True), (ErrorCode.SHUTTING_DOWN, 503, True),
    (ErrorCode.INVALID_PARAMS, 400, False), (ErrorCode.NOT_FOUND, 404, False), (ErrorCode.EXPIRED, 410, False),
    (ErrorCode.PROTOCOL_MISMATCH, 502, False),
])
def test_model_server_errors_map_to_statuses_with_retry_after_where_it_helps(client, fake, code, status, retry):
    fake.will_raise(code, retryable=retry, retry_after=7.2 if retry else None, on="submit")
    response = client.post("/generate", json={"prompt": "a cat"})
    assert response.status_code == status
    assert response.get_json() == {"error": "boom", "code": code.value, "hint": "do X",
                                   **({"retry_after": 7.2} if retry else {})}
    assert response.headers.get("Retry-After") == ("8" if retry else None)


def test_an_unreachable_model_server_is_503_with_advice(client, fake):
    fake.will_be_unreachable(on="submit")
    response = client.post("/v1/jobs", json={"prompt": "a cat"})
    assert response.status_code == 503 and response.headers["Retry-After"] == "5"
    assert "model server" in response.get_json()["hint"]


def test_a_failed_job_is_a_5xx_with_the_job_hint(client, fake):
    fake.outcome = JobState.FAILED
    response = client.post("/generate", json={"prompt": "a cat"})
    assert response.status_code == 503
    assert response.get_json()["hint"] == "Try a smaller size."


def test_a_job_cancelled_elsewhere_is_409_for_the_waiting_request(client, fake):
    fake.outcome = JobState.CANCELLED
    assert client.post("/generate", json={"prompt": "a cat"}).status_code == 409


def test_a_job_stopped_by_a_model_server_shutdown_is_a_retryable_503_not_a_user_cancel(client, fake):
    fake.outcome = JobState.FAILED
    fake.outcome_error = ErrorInfo(code=ErrorCode.SHUTTING_DOWN, message="the model server shut down",
                                   hint="Submit it again.", retryable=True, retry_after=5.0)
    for path in ("/generate", "/v1/images/generations"):
        response = client.post(path, json={"prompt": "a cat"})
        assert response.status_code == 503 and int(response.headers["Retry-After"]) == 5, path


def test_job_submission_is_202_with_location_and_the_job(client):
    response = client.post("/v1/jobs", json={"prompt": "a cat", "steps": 3})
    assert response.status_code == 202
    job = response.get_json()
    assert response.headers["Location"] == f"/v1/jobs/{job['id']}"
    assert job["state"] == "queued" and job["queue_position"] == 1 and job["params"]["steps"] == 3
    assert job["links"]["events"] == f"/v1/jobs/{job['id']}/events"


def test_unknown_and_malformed_job_ids_are_404(client):
    assert client.get("/v1/jobs/nope").status_code == 404
    assert client.get("/v1/jobs/" + "x" * 100).status_code == 404
    assert client.delete("/v1/jobs/bad%20id").status_code == 404


def test_the_image_of_an_unfinished_job_is_409_with_retry_after(client):
    job = client.post("/v1/jobs", json={"prompt": "a cat"}).get_json()
    response = client.get(f"/v1/jobs/{job['id']}/image")
    assert response.status_code == 409 and response.headers["Retry-After"]
    assert client.get(f"/v1/jobs/{job['id']}/image?index=x").status_code == 400


def test_events_stream_progress_then_completed_as_sse(client):
    job = client.post("/v1/jobs", json={"prompt": "a cat"}).get_json()
    response = client.get(f"/v1/jobs/{job['id']}/events")
    assert response.mimetype == "text/event-stream"
    text = response.get_data(as_text=True)
    assert text.index("event: progress") < text.index("event: completed")
    assert client.get(f"/v1/jobs/{job['id']}/image").data == PNG


def test_events_stream_every_change_a_client_sees_the_phases_before_step_1_too(client, fake):
    fake.details = ["loading model other: 1.0 s", "loading model other: compiling"]
    job = client.post("/v1/jobs", json={"prompt": "a cat"}).get_json()
    text = client.get(f"/v1/jobs/{job['id']}/events").get_data(as_text=True)
    assert text.index("loading model other: 1.0 s") < text.index("loading model other: compiling")
    assert text.count("event: progress") == 3


def test_delete_cancels_that_job(client, fake):
    job = client.post("/v1/jobs", json={"prompt": "a cat"}).get_json()
    response = client.delete(f"/v1/jobs/{job['id']}")
    assert response.status_code == 200 and response.get_json()["state"] == "cancelled"
    assert fake.cancelled == [job["id"]]


def test_health_has_the_seed_shape_plus_queue_and_memory(client):
    body = client.get("/health").get_json()
    assert {"status", "device", "model", "optimizations", "queue", "memory", "model_state"} <= set(body)
    assert body["status"] == "ok" and body["device"] == "cpu" and body["optimizations"]["dtype"] == "bfloat16"


def test_health_reports_loading_and_unreachable(client, fake):
    fake.model_state = ModelState.LOADING
    assert client.get("/health").get_json()["status"] == "loading"
    response = client.get("/health/ready")
    assert response.status_code == 503 and response.headers["Retry-After"]
    fake.will_be_unreachable()
    response = client.get("/health")
    assert response.status_code == 503 and response.get_json()["status"] == "unavailable"


def test_readiness_during_shutdown_is_a_503_with_retry_after(client, fake):
    fake.model_state = ModelState.STOPPING
    response = client.get("/health/ready")
    assert response.status_code == 503 and int(response.headers["Retry-After"]) >= 1


def test_liveness_does_not_touch_the_model_server(client, fake):
    fake.will_be_unreachable()
    assert client.get("/health/live").status_code == 200


def test_unknown_routes_and_methods_answer_json(client):
    for response, status in ((client.get("/nope"), 404), (client.get("/generate"), 405)):
        assert response.status_code == status
        assert set(response.get_json()) >= {"error", "code", "hint"}


def test_cors_is_off_by_default_and_follows_the_allowlist(make_client):
    assert "Access-Control-Allow-Origin" not in make_client().get(
        "/health/live", headers={"Origin": "https://a.example"}).headers
    client = make_client(cors_origins=("https://a.example",))
    allowed = client.get("/health/live", headers={"Origin": "https://a.example"})
    assert allowed.headers["Access-Control-Allow-Origin"] == "https://a.example"
    denied = client.get("/health/live", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in denied.headers


def test_cors_origins_from_the_environment_are_a_list_not_a_string(make_client):
    # A comma-separated variable once reached flask-cors as one string, whose characters it took for
    # patterns: "https://a.example" let any origin starting with an "h" in.
    from gateway.settings import GatewaySettings

    origins = GatewaySettings.from_env({"CORS_ORIGINS": "https://a.example, https://b.example"}).cors_origins
    assert origins == ("https://a.example", "https://b.example")
    client = make_client(cors_origins=origins)
    assert client.get("/health/live", headers={"Origin": "https://b.example"}).headers[
        "Access-Control-Allow-Origin"] == "https://b.example"
    for evil in ("https://evil.example", "https://a.example.evil", "h"):
        assert "Access-Control-Allow-Origin" not in client.get("/health/live", headers={"Origin": evil}).headers


def test_a_wildcard_cors_origin_is_refused():
    from gateway.settings import GatewaySettings

    with pytest.raises(ValueError, match="wildcard"):
        GatewaySettings.from_env({"CORS_ORIGINS": "*"})


def test_the_web_page_is_served(client):
    response = client.get("/")
    assert response.status_code == 200 and b"<form" in response.data


def test_listing_jobs_gives_the_callers_unfinished_then_finished_ones_and_refuses_odd_queries(make_client, fake):
    client = make_client()
    done = client.post("/v1/jobs", json={"prompt": "a cat"}).get_json()["id"]
    list(fake.watch(done))  # the fake finishes a job when it is watched
    waiting = client.post("/v1/jobs", json={"prompt": "a dog"}).get_json()["id"]
    listed = client.get("/v1/jobs").get_json()["jobs"]
    assert [j["id"] for j in listed] == [waiting, done] and listed[1]["state"] == "succeeded"
    assert [j["id"] for j in client.get("/v1/jobs?state=finished&limit=1").get_json()["jobs"]] == [done]
    assert [j["id"] for j in client.get("/v1/jobs?state=unfinished").get_json()["jobs"]] == [waiting]
    other = client.get("/v1/jobs", environ_base={"REMOTE_ADDR": "10.0.0.9"}).get_json()["jobs"]
    assert other == []  # without keys a client is its address: another sees none of these
    for query, field in (("state=all", "state"), ("limit=0", "limit"), ("limit=1000", "limit"), ("limit=x", "limit")):
        response = client.get(f"/v1/jobs?{query}")
        assert response.status_code == 400 and response.get_json()["field"] == field


def test_measuring_asks_for_the_presets_the_model_runs_and_refuses_odd_bodies(make_client, fake):
    client = make_client()
    fake.models[0].unavailable_presets["fast"] = "no LCM-LoRA here"
    started = client.post("/v1/capabilities/measure", json={})
    assert started.status_code == 202
    assert [j["preset"] for j in started.get_json()["jobs"]] == ["quality", "balanced"]  # turbo and fast: unavailable
    odd = ({"presets": [[1]]}, {"presets": [{}]}, {"presets": "fast"}, {"presets": ["warp"]}, {"presets": []})
    for body, field in [(b, "presets") for b in odd] + [({"width": 10**30}, "width")]:
        refused = client.post("/v1/capabilities/measure", json=body)
        assert refused.status_code == 400 and refused.get_json()["field"] == field, body
