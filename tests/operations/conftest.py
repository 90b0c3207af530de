"""Real processes for the operations tests: Redis, the model server (fake pipeline: these tests
are about the service around the model, and the fake makes them fast) and gunicorn."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import requests

from tests.helpers import free_port, start_gateway, start_model_server, wait_ready, wait_until



@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    server = shutil.which("redis-server")
    if server is None:
        if os.environ.get("REQUIRE_REDIS") == "1":
            pytest.fail("redis-server not found (REQUIRE_REDIS=1)")
        pytest.skip("redis-server not installed (Debian package redis-server)")
    port = free_port()
    proc = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(tmp_path_factory.mktemp("redis"))], stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"

    def up():
        try:
            import redis

            return redis.Redis.from_url(url, socket_timeout=1).ping()
        except Exception:
            return False

    wait_until(up, 10, 0.1, "redis up")
    yield url
    proc.terminate()
    proc.wait(5)


class Service:
    def __init__(self, log_dir, model_env=None, gateway_env=None):
        self.log_dir = log_dir
        self.model_port, self.http_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.model_env = {"MODEL_SERVER_PIPELINE": "fake", "FAKE_STEP_SECONDS": "0.01", **(model_env or {})}
        self.model = start_model_server(log_dir, self.model_port, **self.model_env)
        self.gateway = start_gateway(log_dir, self.http_port, self.model_port, MODEL_SERVER_TIMEOUT=3,
                                     **(gateway_env or {}))
        try:
            wait_ready(self.url, self.model)
        except Exception:  # never leave the processes behind a start that failed
            self.stop()
            raise

    def restart_model(self):
        self.model.stop()
        self.model = start_model_server(self.log_dir, self.model_port, **self.model_env)
        wait_ready(self.url, self.model)

    def stop(self):
        self.gateway.stop()
        self.model.stop()

    def post(self, path, body, **kw):
        return requests.post(self.url + path, json=body, timeout=kw.pop("timeout", 60), **kw)

    def get(self, path, **kw):
        return requests.get(self.url + path, timeout=kw.pop("timeout", 30), **kw)


@pytest.fixture
def service_factory(log_dir):
    services = []

    def make(**kw) -> Service:
        services.append(Service(log_dir, **kw))
        return services[-1]

    yield make
    for service in services:
        service.stop()
        assert "Traceback" not in service.gateway.log()
