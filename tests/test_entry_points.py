"""Every entry point answers --help with its usage and starts nothing (no model, no socket, no venv)."""

from __future__ import annotations

import subprocess
import time

import pytest

from tests.helpers import PYTHON, ROOT, base_env

pytestmark = pytest.mark.slow  # each is a process of its own

MODULES = ["model_server", "model_server fetch", "model_server.healthcheck", "model_server.engine.tiny_model",
           "model_server.engine.convert", "model_server.engine.openvino_convert", "model_server.engine.openvino_int8",
           "model_server.engine.single_file", "common.curve",
           *(f"bench.{name}" for name in ("compile_peak", "drift", "fleet", "ir_compare", "load_test", "measure",
                                          "models", "peer_openvino", "roofline", "run", "sd14_model",
                                          "server_vs_bare", "soak"))]
SCRIPTS = [["scripts/run.sh"], ["scripts/test.sh"], ["scripts/setup-venv.sh"], ["scripts/docker-smoke.sh"],
           [PYTHON, "scripts/configuration_reference.py"], [PYTHON, "scripts/fleet-check.py"]]


@pytest.mark.parametrize("command", [[PYTHON, "-m", *m.split()] for m in MODULES] + SCRIPTS,
                         ids=[m for m in MODULES] + [s[-1] for s in SCRIPTS])
def test_help_prints_the_usage_and_starts_nothing(command, tmp_path):
    started = time.monotonic()
    # A model server that started anyway would bind here and begin loading the default model.
    env = base_env(MODEL_SERVER_BIND=f"ipc://{tmp_path}/sock/model.sock", OUTPUTS_DIR=str(tmp_path / "outputs"),
                   VENV=str(tmp_path / "no-venv"))
    done = subprocess.run([*command, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    text = done.stdout + done.stderr
    assert "usage" in text.lower() or "Usage" in text or len(text.splitlines()) >= 2, text[:500]
    assert not (tmp_path / "sock").exists() and not (tmp_path / "outputs").exists()
    assert not (tmp_path / "no-venv").exists(), "no virtualenv set up for --help"
    assert "listening" not in text and time.monotonic() - started < 60
