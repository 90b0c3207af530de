"""gunicorn's gthread worker, made safe from slow clients for runs without a reverse proxy.

Plain gthread gives a connection to a thread as soon as it is readable, and the thread then reads
the request with blocking reads and no time limit: a client that sends half a request (slowloris)
holds a thread as long as it likes, and a few of them starve the pool, liveness probes included.
This worker does what a buffering proxy does, in its event loop: it reads each request without
blocking until the headers and body (up to ``_BUFFER_LIMIT``) are all there, and only then hands
it to a thread. A request that has not arrived whole within CLIENT_READ_TIMEOUT seconds is
dropped without ever taking a thread, and a client that stops reading its answer is dropped after
CLIENT_WRITE_TIMEOUT. Behind compose's nginx (docker/nginx.conf) requests arrive whole anyway.
"""

from __future__ import annotations

import errno
import re
import socket
import time

from gunicorn.workers.gthread import ThreadWorker

from gateway.settings import ServingSettings

_BUFFER_LIMIT = 256 * 1024  # bodies beyond this are read by the thread (the gateway refuses > 64 KiB)
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d{1,12})", re.IGNORECASE)
_STREAMED = re.compile(rb"\r\n(expect|transfer-encoding):", re.IGNORECASE)


def request_complete(data: bytes | bytearray) -> bool:
    """True once ``data`` holds a whole request (or as much as is worth buffering)."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return len(data) >= _BUFFER_LIMIT  # oversized headers: gunicorn refuses them
    head = data[:end]
    if _STREAMED.search(head):  # 100-continue or chunked: the thread reads the body as it comes
        return True
    match = _CONTENT_LENGTH.search(head)
    body = int(match.group(1)) if match else 0
    return len(data) - (end + 4) >= min(body, _BUFFER_LIMIT)


class DeadlineSocket:
    """A client socket that serves the bytes read ahead first, with deadlines on blocking I/O."""

    def __init__(self, sock: socket.socket, read_seconds: float, write_seconds: float):
        self.raw, self._read_seconds, self._write_seconds = sock, read_seconds, write_seconds
        self.pending = bytearray()
        self.restart()

    def restart(self) -> None:
        """A thread takes a new request: its remaining reads get the whole allowance."""
        self._deadline = time.monotonic() + self._read_seconds

    def recv(self, size: int, flags: int = 0) -> bytes:
        if self.pending and not flags & socket.MSG_PEEK:
            data = bytes(self.pending[:size])
            del self.pending[:size]
            return data
        if flags & socket.MSG_DONTWAIT:  # a peek (has the client gone?) never blocks
            return self.raw.recv(size, flags)
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise _too_slow()
        self.raw.settimeout(remaining)
        try:
            return self.raw.recv(size, flags)
        except TimeoutError:
            raise _too_slow() from None
        finally:
            self.raw.settimeout(None)

    def sendall(self, data, flags: int = 0) -> None:
        self.raw.settimeout(self._write_seconds)
        try:
            self.raw.sendall(data, flags)
        except TimeoutError:
            # The client stopped reading: the same as a client gone (logged quietly by gunicorn).
            raise BrokenPipeError(errno.EPIPE, "the client stopped reading") from None
        finally:
            self.raw.settimeout(None)

    def __getattr__(self, name):  # fileno, send, close, setblocking... as the socket has them
        return getattr(self.raw, name)


def _too_slow() -> OSError:
    # ECONNRESET: gunicorn closes the connection and logs it at debug level, with no traceback.
    return ConnectionResetError(errno.ECONNRESET, "the request did not arrive within CLIENT_READ_TIMEOUT")


class DeadlineThreadWorker(ThreadWorker):
    """gthread, but a thread takes a request only once it has arrived whole (see the module)."""

    def init_process(self):
        serving = ServingSettings.from_env()
        self.read_seconds, self.write_seconds = serving.client_read_timeout, serving.client_write_timeout
        self._filling = {}  # connection -> (deadline, the object the poller knows it by)
        super().init_process()

    def on_client_socket_readable(self, conn, client):
        """Runs in the event loop: read ahead without blocking; a thread only for a whole request."""
        if not isinstance(conn.sock, DeadlineSocket):
            conn.sock = DeadlineSocket(conn.sock, self.read_seconds, self.write_seconds)
        sock = conn.sock
        try:
            chunk = sock.raw.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if chunk:
            sock.pending += chunk
            if conn not in self._filling:
                with self._lock:
                    if conn.initialized:  # a keep-alive connection: it is no longer idle
                        try:
                            self._keep.remove(conn)
                        except ValueError:
                            return  # just closed as idle
                self._filling[conn] = (time.monotonic() + self.read_seconds, client)
            if not request_complete(sock.pending):  # searched in place: no copy per chunk
                return
        elif conn.initialized and conn not in self._filling:
            return super().on_client_socket_readable(conn, client)  # an idle keep-alive closed: as gthread does
        # Whole (or the client closed: a thread lets gunicorn finish or close it as usual).
        self._filling.pop(conn, None)
        with self._lock:
            self.poller.unregister(client)
        self.enqueue_req(conn)

    def handle(self, conn):
        conn.sock.restart()
        return super().handle(conn)

    def murder_keepalived(self):
        super().murder_keepalived()
        now = time.monotonic()
        for conn, (deadline, client) in list(self._filling.items()):
            if deadline > now:
                continue
            del self._filling[conn]
            self.nr_conns -= 1
            with self._lock:
                try:
                    self.poller.unregister(client)
                except (KeyError, ValueError, OSError):
                    pass
            conn.close()
