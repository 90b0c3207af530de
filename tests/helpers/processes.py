"""Starting the real processes for tests: the model server and the gunicorn gateway."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
GUNICORN = str(Path(sys.executable).with_name("gunicorn"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout: float, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"{what} not reached within {timeout} s")


class Proc:
    """A child process with its output in a log file (shown when a test fails)."""

    def __init__(self, name: str, args: list[str], env: dict, log_dir: Path):
        self.name = name
        self.log_path = log_dir / f"{name}-{int(time.time() * 1000)}.log"
        self._log = open(self.log_path, "wb")
        self.popen = subprocess.Popen(args, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                      start_new_session=True)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        if self.alive():
            os.killpg(self.popen.pid, sig)

    def stop(self, timeout: float = 15.0) -> int | None:
        self.signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            return self.popen.wait(5)
        finally:
            self._log.close()


def base_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HF_", "SD_", "MODEL_SERVER_", "GATEWAY_", "RATE_LIMIT_", "API_KEYS", "OUTPUTS_"))}
    env.update(PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", LOG_LEVEL="INFO")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def start_model_server(log_dir: Path, port: int, wrap=None, **env) -> Proc:
    """``python -m model_server`` on loopback; ``wrap`` turns its command into another (a cgroup's, say)."""
    env.setdefault("OUTPUTS_DIR", log_dir / f"outputs-{port}")
    env.setdefault("SD_CACHE_DIR", log_dir / "sd-cache")  # bf16 copies, shared by a run's servers
    args = [PYTHON, "-m", "model_server"]
    return Proc("model-server", wrap(args) if wrap else args,
                base_env(MODEL_SERVER_BIND=f"tcp://127.0.0.1:{port}", **env), log_dir)


def start_gateway(log_dir: Path, port: int, model_port: int, **env) -> Proc:
    env.setdefault("GATEWAY_WORKERS", 2)
    env.setdefault("GATEWAY_THREADS", 16)
    env.setdefault("RATE_LIMIT_ENABLED", "false")  # tests poll fast; the limits have their own tests
    env.setdefault("MODEL_SERVER_ADDRESS", f"tcp://127.0.0.1:{model_port}")
    return Proc("gateway", [GUNICORN, "-c", "gunicorn.conf.py"],
                base_env(GATEWAY_BIND=f"127.0.0.1:{port}", **env), log_dir)


def wait_ready(base_url: str, proc: Proc | None = None, timeout: float = 90.0) -> None:
    def ready():
        if proc is not None and not proc.alive():
            raise RuntimeError(f"{proc.name} exited early:\n{proc.log()[-3000:]}")
        try:
            return requests.get(f"{base_url}/health/ready", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    wait_until(ready, timeout, 0.2, f"{base_url} ready")


def run_async(fn, *args):
    """``asyncio.run(fn(*args))`` on a thread of its own: in a suite where Playwright's sync API holds an event
    loop in the main thread, asyncio.run there would refuse to start."""
    import asyncio
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(fn(*args))).result()
