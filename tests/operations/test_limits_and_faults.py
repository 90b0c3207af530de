"""Rate limits shared through Redis, Redis failing, lost jobs after a crash, a worker killed mid-stream."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time

import pytest
import requests

from tests.helpers import wait_until

pytestmark = pytest.mark.slow
SMALL = {"prompt": "a cat", "steps": 3, "width": 64, "height": 64}


def test_rate_limits_are_shared_by_all_gunicorn_workers_through_redis(service_factory, redis_url):
    service = service_factory(gateway_env={"RATE_LIMIT_ENABLED": "true", "RATE_LIMIT_STORAGE": redis_url,
                                           "RATE_LIMIT_GENERATE": "3/minute", "GATEWAY_WORKERS": 3})
    statuses = []
    for _ in range(7):  # a new connection each time, so gunicorn spreads them over its workers
        statuses.append(requests.post(service.url + "/v1/jobs", json=SMALL, timeout=10,
                                      headers={"Connection": "close"}).status_code)
    assert statuses.count(202) == 3 and statuses.count(429) == 4, statuses


def test_the_default_run_keeps_the_documented_limit_exact(service_factory):
    # No store configured and no worker count: the gateway runs so that 3/minute means 3, not 3 per worker.
    service = service_factory(gateway_env={"RATE_LIMIT_ENABLED": "true", "RATE_LIMIT_GENERATE": "3/minute",
                                           "GATEWAY_WORKERS": ""})
    statuses = [requests.post(service.url + "/v1/jobs", json=SMALL, timeout=10,
                              headers={"Connection": "close"}).status_code for _ in range(8)]
    assert statuses.count(202) == 3 and statuses.count(429) == 5, statuses


@pytest.mark.parametrize("mode, expected", [("memory", {202, 429}), ("open", {202}), ("closed", {503})])
def test_with_redis_down_limits_fail_as_configured_and_never_500(service_factory, mode, expected):
    service = service_factory(gateway_env={"RATE_LIMIT_ENABLED": "true", "RATE_LIMIT_GENERATE": "2/minute",
                                           "RATE_LIMIT_STORAGE": "redis://127.0.0.1:1/0",
                                           "RATE_LIMIT_ON_STORE_ERROR": mode, "GATEWAY_WORKERS": 1})
    statuses = {service.post("/v1/jobs", SMALL).status_code for _ in range(4)}
    assert statuses == expected
    assert service.get("/health/live").status_code == 200


def test_a_model_server_killed_mid_job_reports_it_lost_and_keeps_finished_outputs(service_factory):
    service = service_factory(model_env={"FAKE_STEP_SECONDS": "0.1"})
    done = service.post("/generate", {**SMALL, "seed": 5})
    done_id = done.headers["X-Job-Id"]
    long_job = service.post("/v1/jobs", {**SMALL, "steps": 100}).json()
    wait_until(lambda: service.get(f"/v1/jobs/{long_job['id']}").json()["state"] == "running", 10)
    service.model.signal(signal.SIGKILL)
    service.restart_model()
    lost = service.get(f"/v1/jobs/{long_job['id']}").json()
    assert lost["state"] == "failed" and lost["error"]["code"] == "model_server_lost" and lost["error"]["retryable"]
    assert service.get(f"/v1/jobs/{done_id}").json()["state"] == "succeeded"
    assert service.get(f"/v1/jobs/{done_id}/image").content == done.content


def test_a_gateway_worker_killed_mid_stream_loses_nothing(service_factory):
    service = service_factory(model_env={"FAKE_STEP_SECONDS": "0.05"}, gateway_env={"GATEWAY_WORKERS": 2})
    job = service.post("/v1/jobs", {**SMALL, "steps": 60}).json()
    stream = requests.get(f"{service.url}/v1/jobs/{job['id']}/events", stream=True, timeout=30)
    lines = stream.iter_lines(decode_unicode=True)
    next(line for line in lines if line.startswith("event: progress"))
    workers = [int(p) for p in re.findall(r"Booting worker with pid: (\d+)", service.gateway.log())]
    for pid in workers:  # kill every worker: whichever serves the stream dies
        os.kill(pid, signal.SIGKILL)
    with pytest.raises(requests.RequestException):
        for _ in lines:
            pass
    wait_until(lambda: _live(service), 15, 0.2, "gateway respawned its workers")
    with requests.get(f"{service.url}/v1/jobs/{job['id']}/events", stream=True, timeout=30) as again:
        events = [line for line in again.iter_lines(decode_unicode=True) if line.startswith("event:")]
    assert events[-1] == "event: completed"
    assert service.get(f"/v1/jobs/{job['id']}/image").status_code == 200


def _live(service) -> bool:
    try:
        return service.get("/health/live", timeout=1).status_code == 200
    except requests.RequestException:
        return False


def test_the_request_id_follows_a_job_into_the_model_server_log(service_factory):
    service = service_factory()
    response = service.post("/generate", SMALL, headers={"X-Request-Id": "trace-abc-123"})
    assert response.headers["X-Request-Id"] == "trace-abc-123"
    job_id = response.headers["X-Job-Id"]
    wait_until(lambda: "succeeded" in service.model.log(), 5)
    lines = [line for line in service.model.log().splitlines() if f"job={job_id}" in line]
    assert len(lines) >= 3 and all("rid=trace-abc-123" in line for line in lines)


def test_json_logs_are_one_object_per_line_with_the_ids(service_factory):
    service = service_factory(model_env={"LOG_FORMAT": "json"}, gateway_env={"LOG_FORMAT": "json"})
    job_id = service.post("/generate", SMALL, headers={"X-Request-Id": "json-1"}).headers["X-Job-Id"]
    wait_until(lambda: "succeeded" in service.model.log(), 5)
    records = [json.loads(line) for line in service.model.log().splitlines() if line.startswith("{")]
    mine = [r for r in records if r.get("job_id") == job_id]
    assert mine and all(r["request_id"] == "json-1" for r in mine)


def test_metrics_add_up_across_gunicorn_workers(service_factory):
    service = service_factory(gateway_env={"GATEWAY_WORKERS": 2})
    for _ in range(12):
        requests.get(service.url + "/health/live", headers={"Connection": "close"}, timeout=5)
    service.post("/generate", SMALL)
    text = service.get("/metrics").text
    live = sum(float(m.group(1)) for m in re.finditer(
        r'sdcpu_http_requests_total\{method="GET",route="/health/live",status="200"\} (\S+)', text))
    assert live >= 12
    assert re.search(r'sdcpu_jobs_total\{outcome="succeeded"\} [1-9]', text)
    assert re.search(r"sdcpu_model_server_up 1\.0", text)


def test_a_client_hanging_up_during_a_burst_leaves_no_hung_requests(service_factory):
    service = service_factory(model_env={"FAKE_STEP_SECONDS": "0.02"})
    results = []

    def one(i):
        try:
            results.append(service.post("/generate", {**SMALL, "steps": 20, "seed": i}, timeout=30).status_code)
        except requests.RequestException as exc:
            results.append(type(exc).__name__)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 12 and set(results) <= {200, 429}, results
    assert time.monotonic()  # every request answered; none hung past its timeout


def test_a_model_server_killed_and_restarted_under_load_loses_nothing(service_factory):
    from bench import load_test

    service = service_factory(model_env={"FAKE_STEP_SECONDS": "0.02", "MAX_QUEUED_PER_CLIENT": "0"})
    outcome = {}
    runner = threading.Thread(target=lambda: outcome.update(result=load_test.run(service.url, clients=12,
                                                                                   seconds=10)))
    runner.start()
    time.sleep(3)
    service.model.signal(signal.SIGKILL)
    time.sleep(1)
    service.restart_model()
    runner.join(200)
    result = outcome["result"]
    statuses = {int(key.split()[1]) for key in result["statuses"]}
    assert result["unexpected_statuses"] == {} and result["timeouts"] == 0, result["statuses"]
    assert 503 in statuses  # the outage was seen, and answered, not hung
    assert result["jobs_lost"] == []  # every accepted job ended: done, cancelled, or failed as lost
