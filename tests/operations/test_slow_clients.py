"""Slow and idle clients on real sockets cannot stop /health/live answering: not in the plain run
(the gateway's read deadline) and not behind the project's nginx configuration (buffering)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time

import pytest
import requests

from tests.helpers import ROOT, free_port, wait_until

pytestmark = pytest.mark.slow
SLOW = 24  # well above the gateway's threads (4 here)
READ_TIMEOUT = 2.0


def _slowloris(port: int, count: int, stop: threading.Event) -> list[socket.socket]:
    """Connections that send half a request, then a byte now and then, until stopped."""
    socks = []
    for i in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        if i % 3 == 0:
            sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\n")  # headers never finished
        elif i % 3 == 1:
            sock.sendall(b'POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n'
                         b'Content-Length: 1000\r\n\r\n{"prompt": "')  # a body that never completes
        socks.append(sock)  # else: connected and silent

    def trickle():
        while not stop.wait(0.5):
            for sock in socks:
                try:
                    sock.sendall(b"a")
                except OSError:
                    pass

    threading.Thread(target=trickle, daemon=True).start()
    return socks


def _liveness_latencies(url: str, seconds: float) -> list[float]:
    latencies, end = [], time.monotonic() + seconds
    while time.monotonic() < end:
        started = time.monotonic()
        assert requests.get(url + "/health/live", timeout=READ_TIMEOUT + 8).status_code == 200
        latencies.append(time.monotonic() - started)
        time.sleep(0.2)
    return latencies


def test_the_plain_gateway_keeps_answering_and_drops_requests_that_do_not_arrive_in_time(service_factory):
    service = service_factory(gateway_env={"GATEWAY_WORKERS": 1, "GATEWAY_THREADS": 4,
                                           "CLIENT_READ_TIMEOUT": READ_TIMEOUT})
    stop = threading.Event()
    socks = _slowloris(service.http_port, SLOW, stop)
    try:
        latencies = _liveness_latencies(service.url, 3 * READ_TIMEOUT)
        # Half-sent requests never take a thread: no probe waits for one to hit its read deadline.
        assert max(latencies) < READ_TIMEOUT / 2, latencies
        closed = 0
        for sock in socks:
            sock.settimeout(0.5)
            try:
                closed += sock.recv(1) == b""
            except (ConnectionResetError, BrokenPipeError):
                closed += 1
            except TimeoutError:
                pass
        assert closed >= SLOW * 2 // 3, "the half-sent requests must be closed by the gateway"
    finally:
        stop.set()
        for sock in socks:
            sock.close()


@pytest.fixture
def nginx_in_front(service_factory, tmp_path):
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.path.exists(nginx):
        if os.environ.get("REQUIRE_NGINX") == "1":
            pytest.fail("nginx not found (REQUIRE_NGINX=1)")
        pytest.skip("nginx not installed (Debian package nginx)")
    service = service_factory(gateway_env={"GATEWAY_WORKERS": 1, "GATEWAY_THREADS": 4, "TRUSTED_PROXIES": 1,
                                           "CLIENT_READ_TIMEOUT": 60})
    port = free_port()
    conf = (ROOT / "docker" / "nginx.conf").read_text()
    conf = conf.replace("server gateway:8000;", f"server 127.0.0.1:{service.http_port};")
    conf = conf.replace("listen 8000;", f"listen 127.0.0.1:{port};")
    (tmp_path / "nginx.conf").write_text(conf)
    proc = subprocess.Popen([nginx, "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"),
                             "-g", f"daemon off; pid {tmp_path}/nginx.pid;"], stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: _up(url), 10, 0.1, "nginx up")
    yield url, port
    proc.terminate()
    proc.wait(10)


def _up(url: str) -> bool:
    try:
        return requests.get(url + "/health/live", timeout=1).status_code == 200
    except requests.RequestException:
        return False


def test_behind_the_projects_nginx_slow_clients_never_reach_the_gateway(nginx_in_front):
    url, port = nginx_in_front
    stop = threading.Event()
    socks = _slowloris(port, SLOW * 4, stop)
    try:
        latencies = _liveness_latencies(url, 4.0)
        assert max(latencies) < 1.0, latencies  # gunicorn never sees the slow requests
        # The real client's address reaches the gateway (rate limits and ownership follow it).
        job = requests.post(url + "/v1/jobs", json={"prompt": "a cat", "steps": 1, "width": 64, "height": 64},
                            timeout=10)
        assert job.status_code == 202
        big = requests.post(url + "/v1/jobs", data=b"x" * (2 * 1024 * 1024), timeout=10,
                            headers={"Content-Type": "application/json"})
        assert big.status_code == 413 and big.json()["code"]
    finally:
        stop.set()
        for sock in socks:
            sock.close()
