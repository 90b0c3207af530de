"""``scripts/run.sh``, the plain run: a crashed model server is restarted, the gateway stays up."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest
import requests

from gateway.model_client import ModelClient
from tests.helpers import Proc, base_env, free_port, wait_ready, wait_until

pytestmark = pytest.mark.slow


def test_a_killed_model_server_is_restarted_runs_what_was_queued_and_the_gateway_keeps_serving(log_dir, tmp_path):
    port = free_port()
    venv = Path(sys.executable).parent.parent  # this test run's virtualenv
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = dict(MODEL_SERVER_PIPELINE="fake", GATEWAY_BIND=f"127.0.0.1:{port}", XDG_RUNTIME_DIR=tmp_path,
               OUTPUTS_DIR=tmp_path / "outputs", VENV=venv, TMPDIR=temp, FAKE_STEP_SECONDS=0.2)
    run = Proc("run-sh", ["bash", "scripts/run.sh"], base_env(**env), log_dir)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, run, timeout=300)  # the first call may install the run's requirements
        client = ModelClient(f"ipc://{tmp_path}/sd-cpu/model.sock", timeout=3)  # the default, private socket
        first = client.ping().pid
        small = {"prompt": "a cat", "steps": 2, "width": 64, "height": 64}
        running = requests.post(url + "/v1/jobs", json={**small, "steps": 100}, timeout=10).json()["id"]
        queued = [requests.post(url + "/v1/jobs", json={**small, "seed": i}, timeout=10).json()["id"]
                  for i in range(2)]
        # Its upload lived in the server's memory only: the gateway, which still has it, places it again.
        queued.append(requests.post(url + "/v1/jobs", json={**small, "init_image": _png()}, timeout=10).json()["id"])
        wait_until(lambda: _state(url, running) == "running", 10, 0.1, "a job running")
        os.kill(first, signal.SIGKILL)
        wait_until(lambda: _pid(client) not in (None, first), 30, 0.2, "a new model server")
        wait_ready(url, run, timeout=30)
        # What waited, never started, runs on the restarted server under its id (never reported failed on
        # the way); the running job is lost.
        seen: dict[str, set] = {job_id: set() for job_id in queued}

        def all_ran() -> bool:
            for job_id in queued:
                seen[job_id].add(_state(url, job_id))
            return all("succeeded" in states for states in seen.values())

        wait_until(all_ran, 30, 0.1, "the queued jobs run on the restarted server")
        assert not any("failed" in states for states in seen.values()), seen
        lost = requests.get(f"{url}/v1/jobs/{running}", timeout=10).json()
        assert lost["state"] == "failed" and lost["error"]["code"] == "model_server_lost" and lost["error"]["retryable"]
        assert requests.post(url + "/v1/jobs", json=small, timeout=10).status_code == 202
        assert "restarting it in 1 s" in run.log()
        client.close()
    finally:
        run.stop(30)
    assert "Traceback" not in run.log()
    assert list(temp.iterdir()) == [], "a run leaves nothing in the temp dir (metrics folder, pip log)"


def _png() -> str:
    import base64
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 40, 40)).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _state(url: str, job_id: str) -> str | None:
    response = requests.get(f"{url}/v1/jobs/{job_id}", timeout=10)
    return response.json()["state"] if response.status_code == 200 else None


def _pid(client: ModelClient) -> int | None:
    try:
        return client.ping(timeout=1).pid
    except Exception:
        return None
