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


def test_a_killed_model_server_is_restarted_and_the_gateway_keeps_serving(log_dir, tmp_path):
    port = free_port()
    venv = Path(sys.executable).parent.parent  # this test run's virtualenv
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = dict(MODEL_SERVER_PIPELINE="fake", GATEWAY_BIND=f"127.0.0.1:{port}", XDG_RUNTIME_DIR=tmp_path,
               OUTPUTS_DIR=tmp_path / "outputs", VENV=venv, TMPDIR=temp)
    run = Proc("run-sh", ["bash", "scripts/run.sh"], base_env(**env), log_dir)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, run, timeout=300)  # the first call may install the run's requirements
        client = ModelClient(f"ipc://{tmp_path}/sd-cpu/model.sock", timeout=3)  # the default, private socket
        first = client.ping().pid
        os.kill(first, signal.SIGKILL)
        wait_until(lambda: _pid(client) not in (None, first), 30, 0.2, "a new model server")
        wait_ready(url, run, timeout=30)
        assert requests.post(url + "/v1/jobs", json={"prompt": "a cat", "steps": 2, "width": 64, "height": 64},
                             timeout=10).status_code == 202
        assert "restarting it in 1 s" in run.log()
        client.close()
    finally:
        run.stop(30)
    assert "Traceback" not in run.log()
    assert list(temp.iterdir()) == [], "a run leaves nothing in the temp dir (metrics folder, pip log)"


def _pid(client: ModelClient) -> int | None:
    try:
        return client.ping(timeout=1).pid
    except Exception:
        return None
