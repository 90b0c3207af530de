"""A Hugging Face Hub stand-in on loopback: serves model folders in the hub's HTTP layout, so the
real hub client (``HF_ENDPOINT``) downloads from it as it would from huggingface.co.

It answers what the client asks while downloading a model: the repo's info
(``/api/models/REPO/revision/REV``), its file tree with sizes and LFS hashes
(``/api/models/REPO/tree/REV``) and each file (``HEAD``/``GET /REPO/resolve/REV/PATH``, with
``Range`` for resumed downloads). Weights (``*.safetensors``) are LFS files, as on the hub: their
ETag is their sha256. Tests can slow it down (``rate`` bytes per second), stop it, require a
token (a gated repo) and read which byte ranges were asked for. ``FirstStart`` is a model server
and gateway whose model comes from it into an empty hub cache.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

import requests

from tests.helpers.processes import free_port, start_gateway, start_model_server, wait_until

COMMIT = "0123456789abcdef0123456789abcdef01234567"
REPO = "sd-cpu/tiny-sd"  # the tiny model's name on the stand-in hub


class _Repo:
    def __init__(self, folder: Path):
        self.files = {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}
        self.sha256 = {name: hashlib.sha256(p.read_bytes()).hexdigest() for name, p in self.files.items()}

    def lfs(self, name: str) -> bool:
        return name.endswith((".safetensors", ".bin"))

    def git_oid(self, name: str) -> str:
        data = self.files[name].read_bytes()
        return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()

    def etag(self, name: str) -> str:
        return self.sha256[name] if self.lfs(name) else self.git_oid(name)

    def tree(self) -> list[dict]:
        entries = []
        for name, path in self.files.items():
            entry = {"type": "file", "path": name, "size": path.stat().st_size, "oid": self.git_oid(name)}
            if self.lfs(name):
                entry["lfs"] = {"oid": self.sha256[name], "size": path.stat().st_size, "pointerSize": 134}
            entries.append(entry)
        return entries


class HubServer:
    """The stand-in hub: ``HubServer({"org/name": folder}).start()``; its ``url`` is HF_ENDPOINT."""

    def __init__(self, repos: dict[str, Path], rate: float | None = None, token: str | None = None,
                 ranges: bool = True):
        self.repos = {repo_id: _Repo(Path(folder)) for repo_id, folder in repos.items()}
        self.rate = rate  # bytes per second for file bodies; None: as fast as it goes
        self.token = token
        self.honour_ranges = ranges  # False: a server (or proxy) that always sends the whole file
        self.ranges: list[tuple[str, int]] = []  # (path, first byte) of every GET of a file
        self._httpd: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self, port: int = 0) -> "HubServer":
        """Serve on ``port`` (0: any free one; a stopped hub's port to bring it back)."""
        hub = self

        class Handler(_Handler):
            server_hub = hub

        ThreadingHTTPServer.allow_reuse_address = True
        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    def stop(self) -> None:
        """Stop answering and drop every open connection (a hub that went away mid-download)."""
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            for conn in list(_Handler.open_connections):
                try:
                    conn.shutdown(2)
                except OSError:
                    pass


_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")
_API = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)(?:/revision/(?P<rev>[^/]+))?/?$")
_TREE = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?$")


class _Handler(BaseHTTPRequestHandler):
    server_hub: HubServer
    open_connections: set = set()
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet: the test output is the model server's log
        pass

    def setup(self) -> None:
        super().setup()
        _Handler.open_connections.add(self.connection)

    def finish(self) -> None:
        _Handler.open_connections.discard(self.connection)
        super().finish()

    def _json(self, status: int, body, headers: dict | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _repo(self, repo_id: str) -> _Repo | None:
        hub = self.server_hub
        if hub.token and self.headers.get("Authorization") != f"Bearer {hub.token}":
            self._json(401, {"error": "Access to this model is restricted."},
                       {"X-Error-Code": "GatedRepo", "X-Error-Message": "Access to this model is restricted."})
            return None
        repo = hub.repos.get(unquote(repo_id))
        if repo is None:
            self._json(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
        return repo

    def do_GET(self) -> None:
        path = urlparse(self.path).path
        if m := _TREE.match(path):
            if repo := self._repo(m["repo"]):
                self._json(200, repo.tree())
        elif m := _API.match(path):
            if repo := self._repo(m["repo"]):
                self._json(200, {"id": unquote(m["repo"]), "modelId": unquote(m["repo"]), "sha": COMMIT,
                                 "private": False, "gated": False, "tags": ["diffusers"],
                                 "siblings": [{"rfilename": name} for name in repo.files]})
        elif m := _RESOLVE.match(path):
            self._file(m, body=True)
        else:
            self._json(404, {"error": f"no route {path}"})

    def do_HEAD(self) -> None:
        m = _RESOLVE.match(urlparse(self.path).path)
        if m is None:
            self._json(404, {})
        else:
            self._file(m, body=False)

    def _file(self, m, body: bool) -> None:
        repo = self._repo(m["repo"])
        if repo is None:
            return
        name = unquote(m["path"])
        if name not in repo.files:
            self._json(404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound"})
            return
        data = repo.files[name].read_bytes()
        start = 0
        rng = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        if rng and body and self.server_hub.honour_ranges:
            start = min(int(rng[1]), len(data))
        headers = {"X-Repo-Commit": COMMIT, "Accept-Ranges": "bytes", "Content-Length": str(len(data) - start)}
        headers["X-Linked-Etag" if repo.lfs(name) else "ETag"] = f'"{repo.etag(name)}"'
        if repo.lfs(name):
            headers["X-Linked-Size"] = str(len(data))
        self.send_response(206 if start else 200)
        if start:
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if not body:
            return
        self.server_hub.ranges.append((name, int(rng[1]) if rng else 0))  # what was asked for
        self._send_body(data[start:])

    def _send_body(self, data: bytes) -> None:
        rate = self.server_hub.rate
        chunk = 16384 if rate is None else max(1024, int(rate / 10))
        try:
            for offset in range(0, len(data), chunk):
                self.wfile.write(data[offset:offset + chunk])
                if rate is not None:
                    time.sleep(chunk / rate)
        except OSError:  # the client (or our stop()) closed the connection
            pass


class FirstStart:
    """A model server and gateway whose model comes from ``hub`` into an empty hub cache."""

    def __init__(self, log_dir, hub_url: str, hf_home, sd_cache, **env):
        self.log_dir, self.model_port, self.http_port = log_dir, free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.env = {"MODEL_SERVER_PIPELINE": "diffusers", "SD_MODEL": REPO, "HF_ENDPOINT": hub_url,
                    "HF_HOME": hf_home, "HF_HUB_OFFLINE": "0", "SD_CACHE_DIR": sd_cache, "SD_BACKEND": "torch",
                    "SD_LCM_LORA": "none", "SD_TINY_VAE": "none", **env}
        self.model = start_model_server(log_dir, self.model_port, **self.env)
        self.gateway = start_gateway(log_dir, self.http_port, self.model_port, MODEL_SERVER_TIMEOUT=3)

    def health(self) -> dict:
        try:
            return requests.get(self.url + "/health", timeout=5).json()
        except (requests.RequestException, ValueError):
            return {}

    def load(self) -> dict | None:
        return self.health().get("load")

    def downloaded(self, at_least: int):
        """Wait until the download has at least ``at_least`` bytes; the load status then."""
        def enough():
            load = self.load() or {}
            return load if load.get("phase") == "downloading" and (load.get("bytes_done") or 0) >= at_least else None

        return wait_until(enough, 60, 0.2, f"{at_least} bytes downloaded")

    def failed(self) -> dict:
        return wait_until(lambda: (h := self.health()).get("model_state") == "failed" and h, 60, 0.3, "a failed load")

    def restart_model(self, **env) -> None:
        self.model.stop()
        self.env.update(env)
        self.model = start_model_server(self.log_dir, self.model_port, **self.env)

    def stop(self) -> None:
        self.gateway.stop()
        self.model.stop()
