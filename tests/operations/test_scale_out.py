"""Three model server processes (fake pipeline) behind the real gunicorn gateway: jobs spread over
all of them, every job route works through any worker, and the loss of one server (kill -9)
loses nothing silently: its running job ends retryable, its queued jobs finish elsewhere, new jobs
avoid it, and it rejoins when restarted."""

from __future__ import annotations

import collections
import threading
import time

import pytest
import requests

from tests.helpers import free_port, start_gateway, start_model_server, wait_until
from tests.integration.conftest import sse_events

STEP = 0.2  # seconds per fake step: a 10-step job takes 2 s, long enough to kill a server under it
LOST_SECONDS = 8  # MODEL_SERVER_LOST_SECONDS: a lost server's running job ends failed after this


class Fleet:
    def __init__(self, log_dir, count: int):
        self.log_dir = log_dir
        self.ports = [free_port() for _ in range(count)]
        self.env = {"MODEL_SERVER_PIPELINE": "fake", "FAKE_STEP_SECONDS": STEP, "MODEL_SERVER_QUEUE_SIZE": 8,
                    "SHUTDOWN_GRACE_SECONDS": 1, "MAX_QUEUED_PER_CLIENT": 0}
        self.servers = [start_model_server(log_dir, port, **self.env) for port in self.ports]
        http = free_port()
        self.url = f"http://127.0.0.1:{http}"
        addresses = ",".join(f"tcp://127.0.0.1:{port}" for port in self.ports)
        self.gateway = start_gateway(log_dir, http, self.ports[0], MODEL_SERVER_ADDRESS=addresses,
                                     MODEL_SERVER_TIMEOUT=3, GATEWAY_WORKERS=2,
                                     MODEL_SERVER_LOST_SECONDS=LOST_SECONDS)
        wait_until(lambda: self.alive() == count, 60, 0.2, "every model server ready")
        # /health pings from the worker that answers it; each gateway worker sees the servers ready at its
        # own next heartbeat (one a second): until then a worker may place only on those it saw ready.
        time.sleep(2.5)

    def health(self) -> dict:
        return requests.get(self.url + "/health", timeout=10).json()

    def alive(self) -> int:
        try:
            return sum(s["alive"] and s.get("model_state") == "ready" for s in self.health().get("servers", []))
        except requests.RequestException:
            return 0

    def server_ids(self) -> dict[str, int]:
        """server_id -> index of the model server process."""
        names = {f"127.0.0.1:{port}": i for i, port in enumerate(self.ports)}
        return {s["server_id"]: names[s["name"]] for s in self.health()["servers"] if s.get("server_id")}

    def submit(self, steps: int = 10, **extra) -> str:
        r = requests.post(self.url + "/v1/jobs", json={"prompt": "a lighthouse", "steps": steps, "width": 64,
                                                       "height": 64, **extra}, timeout=10)
        assert r.status_code == 202, r.text
        return r.json()["id"]

    def job(self, job_id: str) -> requests.Response:
        return requests.get(f"{self.url}/v1/jobs/{job_id}", timeout=10)

    def finished(self, job_id: str, timeout: float = 60) -> dict:
        return wait_until(lambda: (lambda r: r.json() if r.status_code == 200 and r.json()["state"] in (
            "succeeded", "failed", "cancelled") else None)(self.job(job_id)), timeout, 0.2, f"job {job_id} finished")

    def stop(self):
        self.gateway.stop()
        for server in self.servers:
            server.stop()


@pytest.fixture
def fleet(log_dir):
    fleet = Fleet(log_dir, 3)
    yield fleet
    fleet.stop()
    assert "Traceback" not in fleet.gateway.log()


def test_twelve_jobs_spread_over_three_servers_and_every_route_works_from_any_worker(fleet):
    jobs = [fleet.submit(steps=4) for i in range(12)]
    where = collections.Counter(fleet.server_ids()[j[:8]] for j in jobs)
    # Each gateway worker spreads its own placements evenly (tests/gateway/test_fleet.py checks one process
    # exactly) but learns the other's only at its next heartbeat, a second later, and a worker that saw a server
    # miss one ping skips it until the next: across two workers the spread is even only roughly.
    assert sorted(where) == [0, 1, 2] and max(where.values()) <= 6, where
    with requests.get(f"{fleet.url}/v1/jobs/{jobs[-1]}/events", stream=True, timeout=30) as stream:
        names = [name for name, _ in sse_events(stream)]
    assert names[-1] == "completed"
    for job_id in jobs:  # two workers, sixteen threads each: these land all over, and each finds its server
        assert fleet.finished(job_id)["state"] == "succeeded"
        image = requests.get(f"{fleet.url}/v1/jobs/{job_id}/image", timeout=10)
        assert image.status_code == 200 and image.content.startswith(b"\x89PNG")
    long = fleet.submit(steps=50, preview=True)
    wait_until(lambda: (fleet.job(long).json().get("progress") or {}).get("step", 0) >= 2, 20, 0.1, "long job going")
    assert requests.get(f"{fleet.url}/v1/jobs/{long}/preview", timeout=10).status_code == 200
    assert requests.delete(f"{fleet.url}/v1/jobs/{long}", timeout=10).status_code in (200, 202)
    assert fleet.finished(long)["state"] == "cancelled"
    assert requests.delete(f"{fleet.url}/v1/jobs/{jobs[1]}", timeout=10).headers.get("X-Deleted") == "true"
    assert fleet.job(jobs[1]).status_code == 404
    metrics = requests.get(fleet.url + "/metrics", timeout=10).text
    assert metrics.count("sdcpu_server_up{server=") == 3 and "sdcpu_model_servers_ready 3.0" in metrics
    assert 'sdcpu_jobs_total{outcome="succeeded"} 12.0' in metrics


def test_losing_a_server_loses_nothing_silently_and_it_rejoins(fleet, log_dir):
    jobs = [fleet.submit(steps=30) for _ in range(9)]  # three per server: one running, two queued
    ids = fleet.server_ids()
    victim = ids[jobs[0][:8]]
    on_victim = [j for j in jobs if ids[j[:8]] == victim]
    # Its running job's time left is known (the heartbeat listed it, a few steps in), so the gateway
    # knows its queued jobs had not started when it died.
    wait_until(lambda: (fleet.job(on_victim[0]).json().get("progress") or {}).get("step", 0) >= 8, 20, 0.1,
               "victim busy")
    running = [j for j in on_victim if fleet.job(j).json()["state"] == "running"]
    queued = [j for j in on_victim if j not in running]
    assert len(running) == 1 and queued
    events: list[str] = []

    def follow():  # a client streaming a queued job of the victim: its stream carries on elsewhere
        with requests.get(f"{fleet.url}/v1/jobs/{queued[-1]}/events", stream=True, timeout=60) as stream:
            for name, _ in sse_events(stream):
                events.append(name)

    running_events: list[str] = []

    def follow_running():  # a client streaming the running job: it ends failed, never hangs
        with requests.get(f"{fleet.url}/v1/jobs/{running[0]}/events", stream=True, timeout=60) as stream:
            for name, data in sse_events(stream):
                running_events.append((name, data))

    follower = threading.Thread(target=follow)
    running_follower = threading.Thread(target=follow_running)
    follower.start()
    running_follower.start()
    wait_until(lambda: events and running_events, 10, what="the streams open")
    killed_at = time.monotonic()
    fleet.servers[victim].signal(9)

    lost = wait_until(lambda: (lambda r: [r] if r.status_code == 503 else None)(fleet.job(running[0])), 15, 0.2,
                      "the running job reported lost")[0]  # (a 503 Response is falsy)
    assert lost.json()["code"] == "model_server_lost" and lost.headers.get("Retry-After")
    # Within MODEL_SERVER_LOST_SECONDS (from the first failed heartbeat) it ends failed, in every view and
    # every gateway worker: its server never came back.
    ended = fleet.finished(running[0], LOST_SECONDS + 10)
    assert ended["state"] == "failed" and ended["error"]["code"] == "model_server_lost" and ended["error"]["retryable"]
    assert time.monotonic() - killed_at < LOST_SECONDS + 5
    running_follower.join(30)
    assert running_events and running_events[-1][0] == "failed", running_events[-3:]
    assert requests.get(f"{fleet.url}/v1/jobs/{running[0]}/image", timeout=10).status_code == 409
    for job_id in queued:  # placed again on a live server under the same id
        assert fleet.finished(job_id, 60)["state"] == "succeeded", job_id
        assert requests.get(f"{fleet.url}/v1/jobs/{job_id}/image", timeout=10).status_code == 200
    follower.join(60)
    assert events and events[-1] == "completed", events
    for job_id in jobs:
        if job_id not in on_victim:
            assert fleet.finished(job_id)["state"] == "succeeded"

    fresh = [fleet.submit(steps=2) for _ in range(6)]  # the lost server is out of the rotation
    assert all(fleet.finished(j)["state"] == "succeeded" for j in fresh)
    assert victim not in {fleet.server_ids().get(j[:8]) for j in fresh}
    health = fleet.health()
    assert health["status"] == "ok" and [s["alive"] for s in health["servers"]].count(False) == 1

    fleet.servers[victim] = start_model_server(log_dir, fleet.ports[victim], **fleet.env)
    wait_until(lambda: fleet.alive() == 3, 30, 0.3, "the restarted server back in the rotation")
    # Jobs spread in turn among equally idle servers, and each gateway worker learns of the restart at its own
    # next heartbeat: so submit until one lands there (6 in a row can all miss it by chance: (2/3)^6 = 9%).
    again: list[str] = []

    def one_lands_on_the_restarted_server() -> bool:
        again.append(fleet.submit(steps=2))
        return fleet.server_ids()[again[-1][:8]] == victim

    wait_until(one_lands_on_the_restarted_server, 30, 0.2, "a job placed on the restarted server")
    assert all(fleet.finished(j)["state"] == "succeeded" for j in again)
    # The restarted server's records said the moved jobs were still queued: it queued them again and its
    # gateways gave them back, so none ran twice and each still answers as it finished elsewhere.
    for job_id in queued:
        assert fleet.job(job_id).json()["state"] == "succeeded", job_id
    assert fleet.job(running[0]).json()["state"] == "failed"
