"""The seed's flows and the job API against the real processes (tiny random-weight model)."""

from __future__ import annotations

import io
import re
import time

import pytest
import requests
from PIL import Image

from tests.helpers import wait_until
from tests.integration.conftest import sse_events

pytestmark = pytest.mark.slow
SMALL = {"width": 64, "height": 64, "steps": 2}


def post(stack, path, body, **kw):
    return requests.post(stack.url + path, json=body, timeout=kw.pop("timeout", 120), **kw)


def test_the_seed_curl_flow_returns_a_512_png_made_with_25_steps(stack):
    response = post(stack, "/generate", {"prompt": "a cat"})
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "image/png"
    assert Image.open(io.BytesIO(response.content)).size == (512, 512)
    job = requests.get(f"{stack.url}/v1/jobs/{response.headers['X-Job-Id']}", timeout=5).json()
    assert job["params"]["steps"] == 25 and job["state"] == "succeeded"
    assert int(response.headers["X-Seed"]) == job["params"]["seed"]
    # The PNG says which sampler made it as A1111 names it, and the start-up log has no noise.
    assert "Sampler: PNDM," in Image.open(io.BytesIO(response.content)).text["parameters"]
    assert "torchvision" not in stack.model_server.log()


@pytest.mark.parametrize("body, fragment", [
    (b"{not json", "not valid JSON"), (b'{"prompt": ""}', "must not be empty"),
    (b'{"prompt": "' + b"x" * 201 + b'"}', "too long"),
])
def test_the_seed_error_cases_are_400_json_with_a_hint(stack, body, fragment):
    response = requests.post(stack.url + "/generate", data=body, headers={"Content-Type": "application/json"},
                             timeout=10)
    assert response.status_code == 400
    payload = response.json()
    assert fragment in payload["error"] and payload["hint"] and payload["code"]


def test_health_reports_the_real_pipeline_settings(stack):
    body = requests.get(stack.url + "/health", timeout=5).json()
    assert body["status"] == "ok" and body["device"] == "cpu" and body["model_state"] == "ready"
    opts = body["optimizations"]
    assert opts["pipeline"] == "diffusers" and opts["attention"] == "sdpa" and opts["threads"] >= 1
    assert opts["dtype"] in ("bfloat16", "float32") and opts["dtype_reason"]
    assert body["memory"]["rss_bytes"] > 0


def test_the_same_seed_gives_identical_bytes_and_another_seed_does_not(stack):
    a = post(stack, "/generate", {"prompt": "a red cube", "seed": 7, **SMALL})
    b = post(stack, "/generate", {"prompt": "a red cube", "seed": 7, **SMALL})
    c = post(stack, "/generate", {"prompt": "a red cube", "seed": 8, **SMALL})
    assert a.status_code == b.status_code == c.status_code == 200
    assert a.content == b.content != c.content


def test_a_job_watched_over_sse_to_completion_then_fetched(stack):
    submitted = post(stack, "/v1/jobs", {"prompt": "a lighthouse", "width": 128, "height": 96, "steps": 6,
                                         "format": "jpeg", "n": 2})
    assert submitted.status_code == 202
    job_id = submitted.json()["id"]
    with requests.get(f"{stack.url}/v1/jobs/{job_id}/events", stream=True, timeout=60) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        events = list(sse_events(response))
    names = [name for name, _ in events]
    assert names[-1] == "completed" and set(names[:-1]) == {"progress"}
    steps = [(d["progress"]["image_index"], d["progress"]["step"]) for n, d in events if d["state"] == "running"]
    assert steps == sorted(steps) and steps[-1] == (1, 6)
    final = events[-1][1]
    assert [img["seed"] for img in final["images"]] == [final["params"]["seed"], final["params"]["seed"] + 1]
    for img in final["images"]:
        fetched = requests.get(stack.url + img["url"], timeout=10)
        assert fetched.headers["Content-Type"] == "image/jpeg"
        assert Image.open(io.BytesIO(fetched.content)).size == (128, 96)


def test_cancel_while_queued_and_while_running(stack):
    long_job = post(stack, "/v1/jobs", {"prompt": "slow", "steps": 100}).json()
    queued = post(stack, "/v1/jobs", {"prompt": "waiting", **SMALL}).json()
    wait_until(lambda: requests.get(f"{stack.url}/v1/jobs/{long_job['id']}", timeout=5).json()["state"] == "running",
               30)
    cancelled = requests.delete(f"{stack.url}/v1/jobs/{queued['id']}", timeout=5)
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    started = time.monotonic()
    asked = requests.delete(f"{stack.url}/v1/jobs/{long_job['id']}", timeout=5)
    assert asked.status_code == 202 and asked.json()["cancel_requested"]
    wait_until(lambda: requests.get(f"{stack.url}/v1/jobs/{long_job['id']}", timeout=5).json()["state"]
               == "cancelled", 10)
    assert time.monotonic() - started < 5
    final = requests.get(f"{stack.url}/v1/jobs/{long_job['id']}", timeout=5).json()
    assert final["progress"] is None or final["progress"]["step"] < 100
    image = requests.get(f"{stack.url}/v1/jobs/{long_job['id']}/image", timeout=5)
    assert image.status_code == 409 and image.json()["code"] == "job_cancelled"


def test_a_full_queue_answers_429_with_retry_after(stack):
    running = post(stack, "/v1/jobs", {"prompt": "slow", "steps": 100}).json()
    waiting = [post(stack, "/v1/jobs", {"prompt": "wait", **SMALL}).json() for _ in range(2)]
    try:
        response = post(stack, "/generate", {"prompt": "one too many", **SMALL})
        assert response.status_code == 429
        assert int(response.headers["Retry-After"]) >= 1
        assert response.json()["code"] == "queue_full" and response.json()["hint"]
    finally:
        for job in [*waiting, running]:
            requests.delete(f"{stack.url}/v1/jobs/{job['id']}", timeout=5)


def test_liveness_answers_within_100_ms_while_a_generation_runs(stack):
    job = post(stack, "/v1/jobs", {"prompt": "busy", "steps": 60}).json()
    wait_until(lambda: requests.get(f"{stack.url}/v1/jobs/{job['id']}", timeout=5).json()["state"] == "running", 30)
    session = requests.Session()
    timings = []
    for _ in range(20):
        started = time.monotonic()
        assert session.get(f"{stack.url}/health/live", timeout=5).status_code == 200
        timings.append(time.monotonic() - started)
        time.sleep(0.05)
    assert requests.get(f"{stack.url}/v1/jobs/{job['id']}", timeout=5).json()["state"] == "running"
    requests.delete(f"{stack.url}/v1/jobs/{job['id']}", timeout=5)
    timings.sort()
    print(f"/health/live during generation: median {timings[10] * 1000:.1f} ms, max {timings[-1] * 1000:.1f} ms")
    assert timings[-1] < 0.1


def test_a_client_that_hangs_up_on_generate_gets_its_job_cancelled(stack):
    with pytest.raises(requests.Timeout):
        post(stack, "/generate", {"prompt": "abandoned", "steps": 100}, timeout=1.5)
    match = wait_until(lambda: re.search(r"client went away; cancelling job (\w+)", stack.gateway.log()), 10)
    job_id = match.group(1)
    wait_until(lambda: requests.get(f"{stack.url}/v1/jobs/{job_id}", timeout=5).json()["state"] == "cancelled", 10)


def test_image_to_image_through_http_with_the_real_pipeline(stack):
    import base64

    buffer = io.BytesIO()
    Image.new("RGB", (96, 64), (230, 20, 20)).save(buffer, "PNG")
    init = base64.b64encode(buffer.getvalue()).decode()
    body = {"prompt": "a red cat", "init_image": init, "strength": 0.5, "steps": 10, "width": 64, "height": 64}
    response = post(stack, "/generate", body)
    assert response.status_code == 200, response.text
    image = Image.open(io.BytesIO(response.content))
    assert image.size == (64, 64) and "Denoising strength: 0.5" in image.text["parameters"]
    job = requests.get(f"{stack.url}/v1/jobs/{response.headers['X-Job-Id']}", timeout=5).json()
    assert job["params"]["mode"] == "img2img" and job["progress"]["total_steps"] == 5
    # Not an image: the model server's check answers, as a 400 with a hint, never a 5xx.
    bad = post(stack, "/generate", {**body, "init_image": base64.b64encode(b"GIF89a not really").decode()})
    assert bad.status_code == 400 and bad.json()["hint"]
