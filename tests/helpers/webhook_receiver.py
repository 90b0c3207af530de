"""A webhook receiver on loopback for the tests: records every POST, verifies its signature with the
``standardwebhooks`` package (what a user's receiver would use), and answers as scripted per path:
``/ok``, ``/fail/N`` (500 for the first N calls, then 200), ``/redirect`` (302 to cloud metadata),
``/gone`` (410), ``/slow`` (one header byte a second: cut off by the sender's deadline)."""

from __future__ import annotations

import collections
import http.server
import json
import threading
import time

from standardwebhooks.webhooks import Webhook, WebhookVerificationError


class Receiver:
    def __init__(self, secret: str, port: int = 0):
        self.verifier = Webhook(secret)
        self.calls: list[dict] = []  # {"path", "headers", "body", "verified", "payload"}
        self.counts: collections.Counter[str] = collections.Counter()
        self.lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                headers = dict(self.headers.items())
                try:
                    payload, verified = receiver.verifier.verify(body, headers), True
                except WebhookVerificationError:
                    payload, verified = json.loads(body or b"null"), False
                with receiver.lock:
                    receiver.calls.append({"path": self.path, "headers": headers, "body": body,
                                           "verified": verified, "payload": payload})
                    receiver.counts[self.path] += 1
                    count = receiver.counts[self.path]
                self.answer(count)

            def answer(self, count: int):
                path = self.path.split("?")[0]
                if path.startswith("/fail/") and count <= int(path.rsplit("/", 1)[1]):
                    return self.reply(500)
                if path == "/redirect":
                    return self.reply(302, {"Location": "http://169.254.169.254/latest/meta-data/"})
                if path == "/gone":
                    return self.reply(410)
                if path == "/slow":
                    self.wfile.write(b"HTTP/1.1 200 OK\r\n")
                    for _ in range(30):
                        time.sleep(1)
                        try:
                            self.wfile.write(b"X")
                            self.wfile.flush()
                        except OSError:
                            return
                    return
                self.reply(200)

            def reply(self, status: int, headers: dict | None = None):
                self.send_response(status)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def calls_to(self, path: str) -> list[dict]:
        with self.lock:
            return [c for c in self.calls if c["path"] == path]

    def close(self):
        self.server.shutdown()
        self.server.server_close()
