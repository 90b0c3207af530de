"""One webhook attempt: resolve the host, keep only the addresses WEBHOOK_ALLOWED_HOSTS allows,
connect to one of *those* (never resolving again, so a rebinding DNS answer cannot slip in between
the check and the connection), POST the signed body, and read the status. Redirects are not
followed (a 3xx is a failed attempt), the whole attempt is bounded by one deadline, and at most a
little of the answer is read."""

from __future__ import annotations

import http.client
import socket
import ssl
import threading
import time
import urllib.parse
from typing import NamedTuple

from common.webhook_hosts import HostPolicy, parse_address
from model_server.webhooks.signing import signature

USER_AGENT = "sd-cpu-webhooks/1"
_READ_LIMIT = 64 * 1024


class Attempt(NamedTuple):
    ok: bool
    status: int | None = None
    error: str = ""
    final: bool = False  # retrying cannot help (410 Gone)


class _Pinned(http.client.HTTPConnection):
    """An HTTP connection to a checked address, with the URL's host in its Host header."""

    def __init__(self, host: str, port: int, address: str, timeout: float):
        super().__init__(host, port, timeout=timeout)
        self.address = address

    def connect(self):
        self.sock = socket.create_connection((self.address, self.port), self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _PinnedTLS(_Pinned):
    """HTTPS to a checked address: the certificate is still verified for the URL's host."""

    context = ssl.create_default_context()

    def connect(self):
        super().connect()
        self.sock = self.context.wrap_socket(self.sock, server_hostname=self.host)


class Sender:
    """Makes attempts for the dispatcher: signed with the secret's key, checked against the policy."""

    def __init__(self, key: bytes, policy: HostPolicy, timeout: float, clock=time.time):
        self.key = key
        self.policy = policy
        self.timeout = timeout
        self._clock = clock

    def _addresses(self, host: str, port: int) -> tuple[list[str], str]:
        """The addresses of ``host`` it may connect to, or none and why."""
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            return [], f"{host} cannot be resolved: {exc}"
        allowed, refused = [], ""
        for info in infos:
            text = info[4][0]
            address = parse_address(text)
            why = self.policy.address_refusal(host, address) if address is not None else "not an address"
            if why is None:
                allowed.append(text)
            else:
                refused = why
        return allowed, refused

    def post(self, url: str, event_id: str, body: bytes) -> Attempt:
        refusal = self.policy.refusal(url)  # the policy may have changed since the job was accepted
        if refusal:
            return Attempt(False, error=refusal)
        parts = urllib.parse.urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        addresses, why = self._addresses(parts.hostname, port)
        if not addresses:
            return Attempt(False, error=why)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        timestamp = int(self._clock())
        headers = {"content-type": "application/json", "user-agent": USER_AGENT, "webhook-id": event_id,
                   "webhook-timestamp": str(timestamp),
                   "webhook-signature": signature(self.key, event_id, timestamp, body)}
        kind = _PinnedTLS if parts.scheme == "https" else _Pinned
        conn = kind(parts.hostname, port, addresses[0], self.timeout)
        # One deadline for the whole attempt: a receiver answering a byte at a time is cut off.
        cut_off = threading.Event()
        watchdog = threading.Timer(self.timeout, _abort, args=(conn, cut_off))
        watchdog.start()
        try:
            conn.request("POST", path, body=body, headers=headers)
            response = conn.getresponse()
            response.read(_READ_LIMIT)
            status = response.status
        except (OSError, http.client.HTTPException, ValueError) as exc:
            status, failure = None, f"{type(exc).__name__}: {exc}"[:300] if str(exc) else type(exc).__name__
        finally:
            watchdog.cancel()
            conn.close()
        if cut_off.is_set():  # whatever was read, the answer did not arrive whole in time
            return Attempt(False, error=f"no whole answer within {self.timeout:g} s")
        if status is None:
            return Attempt(False, error=failure)
        if 200 <= status < 300:
            return Attempt(True, status)
        if 300 <= status < 400:
            return Attempt(False, status, "redirects are not followed: give the final URL")
        return Attempt(False, status, f"the receiver answered {status}", final=status == 410)


def _abort(conn: http.client.HTTPConnection, cut_off: threading.Event) -> None:
    cut_off.set()
    sock = conn.sock
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
