"""Two API keys on the real service: no client sees or touches another's work (admin keys excepted)."""

from __future__ import annotations

import uuid

import pytest
import requests

from tests.helpers import wait_until

pytestmark = pytest.mark.slow

ALICE, BOB, OPS = "alice-key-1", "bob-key-2", "ops-key-3"
SECRET_PROMPT = "alice secret prompt"


def auth(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def service(service_factory):
    return service_factory(model_env={"FAKE_STEP_SECONDS": "0.05"},
                           gateway_env={"API_KEYS": f"{ALICE},{BOB}", "ADMIN_API_KEYS": OPS,
                                        "AUTH_PUBLIC_HEALTH": "true"})


def _as_unknown(response: requests.Response, job_id: str) -> dict:
    """The body with the id blanked, to compare "someone else's job" with "no such job"."""
    return {k: v.replace(job_id, "<id>") if isinstance(v, str) else v for k, v in response.json().items()}


def test_every_job_route_answers_404_to_another_key_exactly_as_for_an_unknown_id(service):
    job = service.post("/v1/jobs", {"prompt": SECRET_PROMPT, "steps": 60, "preview": True, "width": 64,
                                    "height": 64}, headers=auth(ALICE)).json()
    job_id, unknown = job["id"], uuid.uuid4().hex
    wait_until(lambda: service.get(f"/v1/jobs/{job_id}", headers=auth(ALICE)).json()["state"] == "running", 10)
    wait_until(lambda: service.get(f"/v1/jobs/{job_id}/preview", headers=auth(ALICE)).status_code == 200, 10)

    routes = [("GET", ""), ("GET", "/events"), ("GET", "/image"), ("GET", "/preview"), ("DELETE", "")]
    for method, suffix in routes:
        theirs = requests.request(method, f"{service.url}/v1/jobs/{job_id}{suffix}", headers=auth(BOB), timeout=10)
        nobody = requests.request(method, f"{service.url}/v1/jobs/{unknown}{suffix}", headers=auth(BOB), timeout=10)
        assert theirs.status_code == nobody.status_code == 404, (method, suffix, theirs.text)
        assert _as_unknown(theirs, job_id) == _as_unknown(nobody, unknown)
        assert SECRET_PROMPT not in theirs.text

    # A1111's global routes concern only the caller's own job.
    progress = service.get("/sdapi/v1/progress", headers=auth(BOB)).json()
    assert progress["state"]["job"] == "" and progress["current_image"] is None
    assert service.post("/sdapi/v1/interrupt", {}, headers=auth(BOB)).status_code == 200
    assert service.post("/sdapi/v1/skip", {}, headers=auth(BOB)).status_code == 200
    mine = service.get("/sdapi/v1/progress", headers=auth(ALICE)).json()
    assert mine["state"]["job"] == job_id and not mine["state"]["interrupted"]
    view = service.get(f"/v1/jobs/{job_id}", headers=auth(ALICE)).json()
    assert view["state"] == "running" and not view["cancel_requested"] and not view["interrupted"]

    # Counts, never prompts, in health and metrics.
    for path in ("/health", "/metrics"):
        body = service.get(path, headers=auth(BOB)).text
        assert SECRET_PROMPT not in body and job_id not in body

    # The admin key sees and cancels everything.
    assert service.get(f"/v1/jobs/{job_id}", headers=auth(OPS)).json()["params"]["prompt"] == SECRET_PROMPT
    assert requests.delete(f"{service.url}/v1/jobs/{job_id}", headers=auth(OPS), timeout=10).status_code in (200, 202)
    wait_until(lambda: service.get(f"/v1/jobs/{job_id}", headers=auth(ALICE)).json()["state"] == "cancelled", 10)


def test_a1111_interrupt_stops_only_the_callers_own_job(service):
    alice = service.post("/v1/jobs", {"prompt": "a", "steps": 40, "width": 64, "height": 64},
                         headers=auth(ALICE)).json()["id"]
    bob = service.post("/v1/jobs", {"prompt": "b", "steps": 4, "width": 64, "height": 64},
                       headers=auth(BOB)).json()["id"]
    wait_until(lambda: service.get(f"/v1/jobs/{alice}", headers=auth(ALICE)).json()["state"] == "running", 10)
    # Bob's job is queued behind Alice's: his progress shows his own queued job, not hers.
    progress = service.get("/sdapi/v1/progress", headers=auth(BOB)).json()
    assert progress["state"]["job"] == bob and progress["progress"] == 0.0
    assert service.post("/sdapi/v1/interrupt", {}, headers=auth(ALICE)).status_code == 200
    done = wait_until(lambda: (v := service.get(f"/v1/jobs/{alice}", headers=auth(ALICE)).json())["state"]
                      in ("succeeded", "failed", "cancelled") and v, 10)
    assert done["state"] == "succeeded" and done["interrupted"]
    bobs = wait_until(lambda: (v := service.get(f"/v1/jobs/{bob}", headers=auth(BOB)).json())["state"]
                      == "succeeded" and v, 20)
    assert not bobs["interrupted"]


def test_a_finished_job_is_readable_only_by_its_owner_and_delete_removes_it(service):
    job = service.post("/v1/jobs", {"prompt": "mine", "steps": 2, "width": 64, "height": 64},
                       headers=auth(ALICE)).json()["id"]
    wait_until(lambda: service.get(f"/v1/jobs/{job}", headers=auth(ALICE)).json()["state"] == "succeeded", 10)
    assert service.get(f"/v1/jobs/{job}/image", headers=auth(ALICE)).status_code == 200
    assert service.get(f"/v1/jobs/{job}/image", headers=auth(BOB)).status_code == 404
    assert requests.delete(f"{service.url}/v1/jobs/{job}", headers=auth(BOB), timeout=10).status_code == 404
    deleted = requests.delete(f"{service.url}/v1/jobs/{job}", headers=auth(ALICE), timeout=10)
    assert deleted.status_code == 200 and deleted.headers["X-Deleted"] == "true"
    assert service.get(f"/v1/jobs/{job}", headers=auth(ALICE)).status_code == 404
    assert service.get(f"/v1/jobs/{job}/image", headers=auth(ALICE)).status_code == 404
    outputs = service.log_dir / f"outputs-{service.model_port}"
    assert not list(outputs.glob(f"*/{job}*")), "the job's image and record must be gone from disk"


def test_each_key_lists_its_own_finished_jobs_from_memory_and_after_a_restart_from_disk(service):
    mine = []
    for prompt in ("first", "second"):
        job = service.post("/v1/jobs", {"prompt": prompt, "steps": 2, "width": 64, "height": 64},
                           headers=auth(ALICE)).json()
        wait_until(lambda j=job: service.get(f"/v1/jobs/{j['id']}", headers=auth(ALICE)).json()["state"]
                   == "succeeded", 10)
        mine.append(job["id"])
    service.post("/v1/jobs", {"prompt": "bob's", "steps": 2, "width": 64, "height": 64}, headers=auth(BOB))

    def listed(key):
        return [j["id"] for j in service.get("/v1/jobs?state=finished", headers=auth(key)).json()["jobs"]]

    assert listed(ALICE) == mine[::-1]  # newest first
    service.restart_model()
    assert listed(ALICE) == mine[::-1]  # read back from the records on disk
    assert not set(mine) & set(listed(BOB))
    assert set(mine) <= set(listed(OPS))  # an admin key sees everyone's
