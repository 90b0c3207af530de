"""Signed webhooks through the real service: a job's end POSTed to a loopback receiver that verifies
it with the ``standardwebhooks`` package, retried across a model server killed outright, never
twice; refused URLs are a 400 at submit; the delivery shows on the owner's job view and in /metrics."""

from __future__ import annotations

import base64
import os

import pytest
import requests

from tests.helpers import free_port, wait_until
from tests.helpers.webhook_receiver import Receiver

pytestmark = pytest.mark.slow

SECRET = "whsec_" + base64.b64encode(os.urandom(32)).decode()
ALICE, BOB = "alice-key-1", "bob-key-2"
SMALL = {"width": 64, "height": 64, "steps": 2}


def auth(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def receiver():
    r = Receiver(SECRET)
    yield r
    r.close()


def _service(service_factory, **model_env):
    env = {"WEBHOOK_ALLOWED_HOSTS": "127.0.0.1", "WEBHOOK_SECRET": SECRET, "WEBHOOK_RETRY_SECONDS": "0.3,0.3,0.3",
           "FAKE_STEP_SECONDS": "0.02", **model_env}
    return service_factory(model_env=env, gateway_env={"WEBHOOK_ALLOWED_HOSTS": "127.0.0.1",
                                                       "API_KEYS": f"{ALICE},{BOB}", "AUTH_PUBLIC_HEALTH": "true"})


def _settled(service, job_id: str, key: str = ALICE, timeout: float = 20) -> dict:
    def done():
        view = service.get(f"/v1/jobs/{job_id}", headers=auth(key)).json()
        return view if (view.get("webhook") or {}).get("state") in ("delivered", "failed") else None

    wait_until(done, timeout, 0.1, f"job {job_id}'s webhook settled")
    return done()


def test_each_end_is_posted_signed_once_and_shown_to_its_owner_only(service_factory, receiver):
    service = _service(service_factory)
    done = service.post("/v1/jobs", {"prompt": "a cat", **SMALL, "callback_url": f"{receiver.url}/fail/1?x=1"},
                        headers=auth(ALICE)).json()
    view = _settled(service, done["id"])
    assert view["state"] == "succeeded" and view["webhook"]["state"] == "delivered"
    assert view["webhook"]["attempts"] == 2 and view["webhook"]["last_status"] == 200  # one 500, then delivered
    calls = receiver.calls_to("/fail/1?x=1")
    assert len(calls) == 2 and all(c["verified"] for c in calls)
    assert {c["headers"]["webhook-id"] for c in calls} == {view["webhook"]["event_id"]}
    event = calls[-1]["payload"]
    assert event["type"] == "job.succeeded" and event["data"]["id"] == done["id"]
    image = service.get(event["data"]["images"][0]["url"], headers=auth(ALICE))
    assert image.status_code == 200 and image.content.startswith(b"\x89PNG")
    # The job, and so its delivery, is the owner's only.
    assert service.get(f"/v1/jobs/{done['id']}", headers=auth(BOB)).status_code == 404

    slow = service.post("/v1/jobs", {"prompt": "a dog", **SMALL, "steps": 100, "callback_url": f"{receiver.url}/ok"},
                        headers=auth(ALICE)).json()
    assert requests.delete(f"{service.url}/v1/jobs/{slow['id']}", headers=auth(ALICE), timeout=10).status_code == 202
    assert _settled(service, slow["id"])["webhook"]["state"] == "delivered"
    assert receiver.calls_to("/ok")[0]["payload"]["type"] == "job.cancelled"

    upscale = service.post("/v1/upscale", {"image": base64.b64encode(image.content).decode(), "scale": 2,
                                           "callback_url": f"{receiver.url}/ok"}, headers=auth(ALICE)).json()
    assert _settled(service, upscale["id"])["webhook"]["state"] == "delivered"

    metrics = service.get("/metrics", headers=auth(ALICE)).text
    assert 'sdcpu_webhooks_total{outcome="delivered"} 3.0' in metrics
    assert "sdcpu_webhook_attempts_failed_total 1.0" in metrics


@pytest.mark.parametrize("url, why", [
    ("http://169.254.169.254/latest/meta-data/", "link-local"),  # cloud metadata
    ("http://localhost:9/", "loopback"), ("http://10.0.0.1/", "private"), ("http://2130706433/", "numeric"),
    ("https://hooks.example.com/", "not in WEBHOOK_ALLOWED_HOSTS"), ("file:///etc/passwd", "http"),
    ("http://127.0.0.1:9/\r\nX: y", ""),
])
def test_a_refused_url_is_a_400_at_submit_naming_the_field(service_factory, url, why):
    service = _service(service_factory)
    for path, body in (("/v1/jobs", {"prompt": "a cat", **SMALL}), ("/generate", {"prompt": "a cat", **SMALL}),
                       ("/v1/upscale", {"image": "aGVsbG8=", "scale": 2})):
        response = service.post(path, {**body, "callback_url": url}, headers=auth(ALICE))
        assert response.status_code == 400, (path, response.text)
        error = response.json()
        assert error["field"] == "callback_url" and why in error["error"] and error["hint"]


def test_a_redirect_is_not_followed(service_factory, receiver):
    service = _service(service_factory)
    job = service.post("/v1/jobs", {"prompt": "a cat", **SMALL, "callback_url": f"{receiver.url}/redirect"},
                       headers=auth(ALICE)).json()
    webhook = _settled(service, job["id"])["webhook"]
    assert webhook["state"] == "failed" and webhook["attempts"] == 4 and webhook["last_status"] == 302
    assert "redirects are not followed" in webhook["last_error"]
    assert {c["path"] for c in receiver.calls} == {"/redirect"}


def test_owed_webhooks_outlive_a_killed_model_server_and_a_lost_job_is_reported_once(service_factory):
    port = free_port()  # nothing listens there yet: every attempt fails until the receiver comes up
    service = _service(service_factory, WEBHOOK_RETRY_SECONDS="0.3,0.5,1,1,1,1,1,1,1,1,1,1", FAKE_STEP_SECONDS="0.1")
    done = service.post("/v1/jobs", {"prompt": "a cat", **SMALL, "callback_url": f"http://127.0.0.1:{port}/ok"},
                        headers=auth(ALICE)).json()
    wait_until(lambda: (service.get(f"/v1/jobs/{done['id']}", headers=auth(ALICE)).json().get("webhook") or {})
               .get("attempts", 0) >= 2, 20, 0.1, "two failed attempts")
    event_id = service.get(f"/v1/jobs/{done['id']}", headers=auth(ALICE)).json()["webhook"]["event_id"]
    running = service.post("/v1/jobs", {"prompt": "a dog", **SMALL, "steps": 100,
                                        "callback_url": f"http://127.0.0.1:{port}/ok"}, headers=auth(ALICE)).json()
    wait_until(lambda: service.get(f"/v1/jobs/{running['id']}", headers=auth(ALICE)).json()["state"] == "running",
               20, 0.05, "the second job running")
    service.model.signal(9)  # SIGKILL: no shutdown, no flush
    service.model.popen.wait(10)
    receiver = Receiver(SECRET, port)
    try:
        service.restart_model()
        first, lost = _settled(service, done["id"]), _settled(service, running["id"])
        assert first["webhook"]["state"] == lost["webhook"]["state"] == "delivered"
        assert first["webhook"]["event_id"] == event_id  # the same event as before the kill
        assert lost["state"] == "failed" and lost["error"]["code"] == "model_server_lost"
        events = [c["payload"] for c in receiver.calls if c["verified"]]
        assert sorted((e["data"]["id"], e["type"]) for e in events) == sorted(
            [(done["id"], "job.succeeded"), (running["id"], "job.failed")])
        service.restart_model()  # another restart sends nothing again
        wait_until(lambda: service.get(f"/v1/jobs/{done['id']}", headers=auth(ALICE)).status_code == 200, 10)
        assert len(receiver.calls) == 2
    finally:
        receiver.close()
