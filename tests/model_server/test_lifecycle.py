"""``python -m model_server`` as a real process: SIGTERM and bad configuration."""

from __future__ import annotations

import signal
import subprocess

from gateway.model_client import ModelClient
from protocol.errors import ErrorCode
from protocol.messages import Failed, JobState, ModelState
from tests.helpers import PYTHON, ROOT, base_env, free_port, start_model_server, wait_until
from tests.helpers.servers import params


def test_sigterm_fails_queued_jobs_and_the_running_one_retryably_never_cancelled_and_exits_0(log_dir):
    port = free_port()
    proc = start_model_server(log_dir, port, MODEL_SERVER_PIPELINE="fake", FAKE_STEP_SECONDS=0.1,
                              SHUTDOWN_GRACE_SECONDS=1)
    try:
        client = ModelClient(f"tcp://127.0.0.1:{port}", timeout=3.0)
        watcher = ModelClient(f"tcp://127.0.0.1:{port}", timeout=3.0)  # a socket of its own
        wait_until(lambda: _ready(client), 20, 0.1, "model server ready")
        running = client.submit(params(steps=100))
        queued = client.submit(params())
        wait_until(lambda: client.get_job(running.job_id).state is JobState.RUNNING, 5)
        stream = client.watch(queued.job_id)
        running_stream = watcher.watch(running.job_id)
        next(stream), next(running_stream)
        proc.signal(signal.SIGTERM)
        final = [e for e in stream][-1]
        assert isinstance(final, Failed)
        assert final.job.error.code is ErrorCode.SHUTTING_DOWN and final.job.error.retryable
        # The running job is stopped by the shutdown, not by a user: failed and retryable in every view
        # (never "cancelled", which clients take for a user's cancel), so /generate says 503.
        stopped = [e for e in running_stream][-1]
        assert isinstance(stopped, Failed) and stopped.job.state is JobState.FAILED
        assert stopped.job.error.code is ErrorCode.SHUTTING_DOWN and stopped.job.error.retryable
        assert proc.popen.wait(15) == 0
    finally:
        proc.stop()
    log = proc.log()
    assert f"job={running.job_id} rid=-: stopped by the shutdown" in log
    assert "Traceback" not in log


def _ready(client: ModelClient) -> bool:
    try:
        return client.ping(timeout=1).model_state is ModelState.READY
    except Exception:
        return False


def test_bad_configuration_exits_2_with_a_clear_message():
    result = subprocess.run([PYTHON, "-m", "model_server"], cwd=ROOT, capture_output=True, text=True, timeout=30,
                            env=base_env(SD_DTYPE="float16", MODEL_SERVER_PIPELINE="fake"))
    assert result.returncode == 2
    assert "SD_DTYPE must be auto, float32 or bfloat16" in result.stderr
