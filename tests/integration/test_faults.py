"""Faults against the real processes: the model server killed, restarted, or not there yet."""

from __future__ import annotations

import re
import signal
import threading
import time

import pytest
import requests

from tests.helpers import free_port, start_gateway, wait_ready, wait_until
from tests.integration.conftest import start_stack, stop_stack

pytestmark = pytest.mark.slow


@pytest.fixture
def own_stack(log_dir, tiny_model_dir):
    stack = start_stack(log_dir, tiny_model_dir)
    yield stack
    stop_stack(stack)


def test_sigkill_mid_job_gives_503_within_10_s_and_a_restart_recovers_without_the_gateway(own_stack, log_dir):
    stack = own_stack
    outcome = {}

    def wait_for_image():
        try:
            outcome["response"] = requests.post(stack.url + "/generate", json={"prompt": "doomed", "steps": 100},
                                                timeout=60)
        finally:
            outcome["at"] = time.monotonic()

    waiter = threading.Thread(target=wait_for_image)
    waiter.start()
    wait_until(lambda: requests.get(stack.url + "/health", timeout=5).json()["queue"]["running"], 30)
    killed_at = time.monotonic()
    stack.model_server.signal(signal.SIGKILL)
    waiter.join(30)
    response = outcome["response"]
    assert response.status_code == 503
    assert outcome["at"] - killed_at < 10
    assert "model server" in response.json()["hint"] and response.headers["Retry-After"]
    ready = requests.get(stack.url + "/health/ready", timeout=10)
    assert ready.status_code == 503 and ready.json()["hint"]
    assert requests.post(stack.url + "/generate", json={"prompt": "a cat"}, timeout=10).status_code == 503

    stack.model_server.stop()
    stack.restart_model_server(log_dir)
    wait_ready(stack.url, stack.model_server)
    again = requests.post(stack.url + "/generate", json={"prompt": "a cat", "width": 64, "height": 64,
                                                         "steps": 2}, timeout=60)
    assert again.status_code == 200 and again.headers["Content-Type"] == "image/png"
    assert stack.gateway.alive()


def test_a_gateway_started_before_the_model_server_answers_503_fast(log_dir):
    http_port, model_port = free_port(), free_port()
    gateway = start_gateway(log_dir, http_port, model_port, MODEL_SERVER_TIMEOUT=3)
    url = f"http://127.0.0.1:{http_port}"
    try:
        wait_until(lambda: _live(url), 30, 0.1, "gateway up")
        started = time.monotonic()
        response = requests.post(url + "/generate", json={"prompt": "a cat"}, timeout=10)
        assert response.status_code == 503 and time.monotonic() - started < 3
        assert response.json()["code"] == "model_server_lost" and response.headers["Retry-After"]
        health = requests.get(url + "/health", timeout=10)
        assert health.status_code == 503 and health.json()["status"] == "unavailable"
        assert requests.get(url + "/health/ready", timeout=10).status_code == 503
    finally:
        gateway.stop()
    assert "Traceback" not in gateway.log()


def _live(url: str) -> bool:
    try:
        return requests.get(url + "/health/live", timeout=1).status_code == 200
    except requests.RequestException:
        return False


def test_a_full_outputs_disk_over_http_job_succeeds_unstored_and_health_says_degraded(log_dir, tiny_model_dir,
                                                                                      tmp_path):
    from tests.helpers.disks import small_disk

    with small_disk(tmp_path / "disk", 2048) as disk:
        stack = start_stack(log_dir, tiny_model_dir, OUTPUTS_DIR=disk.folder / "outputs", MIN_FREE_DISK_MB=0)
        try:
            disk.fill()
            job = requests.post(stack.url + "/v1/jobs", json={"prompt": "a cat", "width": 64, "height": 64,
                                                              "steps": 2}, timeout=10).json()
            wait_until(lambda: requests.get(f"{stack.url}/v1/jobs/{job['id']}", timeout=5).json()["state"]
                       == "succeeded", 60)
            view = requests.get(f"{stack.url}/v1/jobs/{job['id']}", timeout=5).json()
            assert view["stored"] is False and "No space left" in view["storage_error"]
            image = requests.get(f"{stack.url}/v1/jobs/{job['id']}/image", timeout=5)
            assert image.status_code == 200 and image.content.startswith(b"\x89PNG")
            health = requests.get(stack.url + "/health", timeout=5).json()
            assert health["status"] == "degraded" and "No space left" in health["degraded"][0]["reason"]
            metrics = requests.get(stack.url + "/metrics", timeout=5).text
            assert float(re.search(r"^sdcpu_storage_errors_total (\S+)$", metrics, re.M).group(1)) >= 1
            disk.free()
            assert requests.post(stack.url + "/generate", json={"prompt": "a cat", "width": 64, "height": 64,
                                                                "steps": 2}, timeout=60).status_code == 200
            assert requests.get(stack.url + "/health", timeout=5).json()["status"] == "ok"
        finally:
            stop_stack(stack)
        assert "Traceback" not in stack.model_server.log()
