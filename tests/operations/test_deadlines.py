"""Deadlines and the capability card through the real service (fake pipeline, known step time): speeds
measured from the jobs a server runs, a deadline refused at submit with the prediction and what would
fit, a queued job failed when its deadline passes, and measuring on demand."""

from __future__ import annotations

import pytest

from tests.helpers import wait_until

pytestmark = pytest.mark.slow

STEP = 0.05
SMALL = {"width": 64, "height": 64}


@pytest.fixture
def service(service_factory, tmp_path):
    return service_factory(model_env={"FAKE_STEP_SECONDS": str(STEP), "SD_CACHE_DIR": str(tmp_path / "cache")})


def _done(service, job_id):
    wait_until(lambda: service.get(f"/v1/jobs/{job_id}").json()["state"] in ("succeeded", "failed", "cancelled"),
               30, 0.05, f"job {job_id} ended")
    return service.get(f"/v1/jobs/{job_id}").json()


def _measured(service):
    return service.get("/v1/capabilities").json()["servers"][0]["measured"]


def test_speeds_are_measured_and_a_deadline_that_cannot_be_met_is_refused_with_what_would_fit(service):
    card = service.get("/v1/capabilities").json()["servers"][0]
    assert card["measured"] == [] and card["host"]["threads"] >= 1 and "turbo" in card["unavailable_presets"]
    for body in ({"prompt": "a cat", "steps": 20, **SMALL}, {"prompt": "a cat", "preset": "fast", **SMALL}):
        job = service.post("/v1/jobs", body).json()
        assert _done(service, job["id"])["state"] == "succeeded"
    quality = next(e for e in _measured(service) if e["preset"] == "quality")
    assert quality["size"] == "64x64" and quality["steps"] == 20 and quality["jobs_measured"] == 1
    assert STEP * 0.8 < quality["seconds_per_step"] < STEP * 3 and quality["peak_memory_bytes"] > 0

    refused = service.post("/v1/jobs", {"prompt": "a cat", "steps": 100, "deadline_seconds": 1.5, **SMALL})
    assert refused.status_code == 422, refused.text
    error = refused.json()
    assert error["code"] == "deadline" and error["field"] == "deadline_seconds"
    assert "after its deadline of 1.5 s" in error["error"] and "fast preset" in error["hint"]
    sync = service.post("/generate", {"prompt": "a cat", "steps": 100, "deadline_seconds": 1.5, **SMALL})
    assert sync.status_code == 422 and sync.json()["code"] == "deadline"
    accepted = service.post("/v1/jobs", {"prompt": "a cat", "steps": 10, "deadline_seconds": 30, **SMALL})
    assert accepted.status_code == 202 and _done(service, accepted.json()["id"])["state"] == "succeeded"


def test_a_queued_job_whose_deadline_passes_ends_with_that_reason(service):
    long = service.post("/v1/jobs", {"prompt": "a cat", "steps": 100, **SMALL}).json()  # 5 s
    wait_until(lambda: service.get(f"/v1/jobs/{long['id']}").json()["state"] == "running", 10, 0.05)
    # Nothing measured for this preset: accepted (no prediction to refuse on), then it waits past its deadline.
    late = service.post("/v1/jobs", {"prompt": "a dog", "preset": "balanced", "deadline_seconds": 1, **SMALL})
    assert late.status_code == 202
    view = _done(service, late.json()["id"])
    assert view["state"] == "failed" and view["error"]["code"] == "deadline" and view["started_at"] is None
    assert "passed while it waited" in view["error"]["message"]
    assert service.get(f"/v1/jobs/{long['id']}").json()["state"] == "running"  # the running job is left alone


def test_measuring_on_demand_runs_one_job_per_preset(service):
    started = service.post("/v1/capabilities/measure", {"presets": ["quality", "fast"], **SMALL})
    assert started.status_code == 202, started.text
    jobs = started.json()["jobs"]
    assert [j["preset"] for j in jobs] == ["quality", "fast"]
    for job in jobs:
        assert _done(service, job["id"])["state"] == "succeeded"
    assert {e["preset"] for e in _measured(service)} == {"quality", "fast"}
    bad = service.post("/v1/capabilities/measure", {"presets": ["warp"]})
    assert bad.status_code == 400 and bad.json()["field"] == "presets"
