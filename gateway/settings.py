"""The gateway's configuration: one frozen object, each field declared with its variable and doc
(``common.env``), built from the environment here only. ``docs/configuration.md`` is generated
from these declarations (``python -m common.reference``)."""

from __future__ import annotations

import dataclasses
import os

from common.env import Env, lines_of_file, load, setting
from common.limits import RequestLimits
from gateway.fleet.discovery import discovery
from common.curve import CurveKeys
from protocol.transport import default_address


def _keys(prefix: str):
    def read(env: Env, name: str) -> tuple[str, ...] | None:
        keys = tuple(k.strip() for k in env.get(name, "").split(",") if k.strip())
        return (keys + lines_of_file(env, f"{prefix}API_KEYS_FILE")) or None

    return read


def _stripped(env: Env, name: str) -> str | None:
    return env.get(name, "").strip() or None


@dataclasses.dataclass(frozen=True)
class GatewaySettings(RequestLimits):
    """The gateway's settings (the request limits included), each read from its variable."""

    model_server: str = setting(
        "MODEL_SERVER_ADDRESS", "Where the model servers listen: one address, a comma-separated list, "
        "`dns+tcp://NAME:PORT` (every address the name resolves to, looked up again every "
        "`MODEL_SERVER_DISCOVERY_SECONDS`: a Kubernetes headless Service), or `ipc-dir:///DIR` (every `*.sock` "
        "there: compose replicas sharing a volume). Each job goes to the ready server with the least work",
        default_factory=default_address, shown="the model server's default bind",
        read=lambda env, name: env.get(name, "").strip() or default_address(env))
    discovery_seconds: float = setting("MODEL_SERVER_DISCOVERY_SECONDS", "How often a `dns+tcp://` name or an "
                                       "`ipc-dir://` directory is looked at again", 5.0)
    curve_secret_key: str = setting(
        "GATEWAY_CURVE_SECRET_KEY", "CurveZMQ: this gateway's key pair (a `zmq.auth` `.key_secret` file; its public "
        "key must be in the model servers' `MODEL_SERVER_CURVE_CLIENTS_DIR`)", "",
        shown="none (no CURVE)")
    curve_server_key: str = setting("MODEL_SERVER_CURVE_PUBLIC_KEY", "CurveZMQ: the model servers' public key "
                                    "(`server.key`); the gateway talks only to a server that holds its secret",
                                    "", shown="none")
    model_server_timeout: float = setting(
        "MODEL_SERVER_TIMEOUT", "Seconds without a reply or heartbeat (one a second) before the model server counts "
        "as down (503)", 5.0)
    model_server_lost_seconds: float = setting(
        "MODEL_SERVER_LOST_SECONDS", "How long a job whose model server stopped answering answers the retryable "
        "`503 model_server_lost` (the server may come back) before it ends `failed` with that error in every view; "
        "a server back as a new process (restarted) ends its lost jobs at once, and runs again those that never "
        "started", 30.0)
    sync_timeout: float = setting("SYNC_TIMEOUT_SECONDS", "Longest `/generate` waits; after that its job is "
                                  "cancelled (504)", 3600.0)
    max_body_bytes: int = setting("MAX_BODY_BYTES", "Larger bodies get 413", 64 * 1024)
    cors_origins: tuple[str, ...] = setting("CORS_ORIGINS", "A comma-separated allowlist of origins; a `*` wildcard "
                                            "is refused", ())
    sse_keepalive_seconds: float = setting("SSE_KEEPALIVE_SECONDS", "Comment lines that keep idle event streams "
                                           "open through proxies", 15.0)
    public_url: str = setting("PUBLIC_URL", "Base of absolute image URLs handed out (OpenAI `response_format=url`), "
                              "e.g. behind a proxy", "", read=_stripped, shown="the request's host")
    api_keys: tuple[str, ...] = setting(
        "API_KEYS", "Comma-separated keys (and `API_KEYS_FILE`, one per line). With keys set, requests need "
        "`Authorization: Bearer <key>`, HTTP Basic with the key as password, `X-API-Key`, or the web page's cookie; "
        "each key's jobs are its own. Keys are compared in constant time and never logged.", (),
        read=_keys(""), shown="none (auth off)", secret=True)
    admin_api_keys: tuple[str, ...] = setting(
        "ADMIN_API_KEYS", "Keys (and `ADMIN_API_KEYS_FILE`) that are valid and may also see and cancel every "
        "client's jobs (operators)", (), read=_keys("ADMIN_"), secret=True)
    trusted_proxies: int = setting(
        "TRUSTED_PROXIES", "Reverse proxies in front whose `X-Forwarded-For` is believed (compose's nginx: 1); rate "
        "limits and, without keys, job ownership then follow the real client", 0)
    auth_public_health: bool = setting("AUTH_PUBLIC_HEALTH", "With keys set, also leave `/health`, `/health/ready` "
                                       "and `/metrics` open (`/health/live` and the page always are)", False)
    rate_limit_enabled: bool = setting("RATE_LIMIT_ENABLED", "Per-client limits (API key fingerprint, else the "
                                       "address)", True)
    rate_limit_storage: str = setting(
        "RATE_LIMIT_STORAGE", "`redis://host:6379/0` shares the limits across gunicorn workers and replicas, as "
        "compose does. With `memory://` the gateway runs one worker, so the limits stay exact.", "memory://",
        read=_stripped)
    rate_limit_generate: str = setting(
        "RATE_LIMIT_GENERATE", "Per client, across the routes that start work; charged only once a request is "
        "valid (a malformed one gets its 400 and costs nothing)", "30/minute")
    rate_limit_read: str = setting("RATE_LIMIT_READ", "Per client, for status, events, images and models (health "
                                   "and metrics are never limited)", "1200/minute")
    rate_limit_on_store_error: str = setting(
        "RATE_LIMIT_ON_STORE_ERROR", "If Redis is down: `memory` falls back to per-process limits, `open` lets "
        "requests through, `closed` answers 503. Never a 500.", "memory", read=_stripped)

    @classmethod
    def from_env(cls, env: Env | None = None) -> "GatewaySettings":
        settings = load(cls, os.environ if env is None else env)
        if settings.rate_limit_on_store_error not in ("memory", "open", "closed"):
            raise ValueError("RATE_LIMIT_ON_STORE_ERROR must be memory, open or closed")
        if "*" in settings.cors_origins:
            raise ValueError("CORS_ORIGINS must list origins; a wildcard is refused")
        settings.limits  # noqa: B018  (checks the bounds against the protocol's)
        discovery(settings.model_server)  # refuses an address it cannot use, at start
        if bool(settings.curve_secret_key) != bool(settings.curve_server_key):
            raise ValueError("CurveZMQ needs both GATEWAY_CURVE_SECRET_KEY and MODEL_SERVER_CURVE_PUBLIC_KEY")
        settings.curve  # noqa: B018  (reads the keys now: a wrong path stops the start)
        return settings

    @property
    def curve(self) -> CurveKeys | None:
        if not self.curve_secret_key:
            return None
        return CurveKeys.for_client(self.curve_secret_key, self.curve_server_key)


@dataclasses.dataclass(frozen=True)
class ServingSettings:
    """How gunicorn serves the gateway (read by gunicorn.conf.py and the worker class)."""

    bind: str = setting("GATEWAY_BIND", "gunicorn's listen address", "127.0.0.1:8000")
    workers: int = setting("GATEWAY_WORKERS", "gunicorn processes; each waiting `/generate` or SSE stream holds "
                           "one thread", 0, shown="1 with `memory://` limits, else 2")
    threads: int = setting("GATEWAY_THREADS", "Threads per gunicorn process", 32)
    worker_timeout: int = setting("GATEWAY_WORKER_TIMEOUT", "gunicorn's worker heartbeat, not a request limit", 60)
    graceful_timeout: int = setting("GATEWAY_GRACEFUL_TIMEOUT", "Seconds a stopping worker may finish its "
                                    "requests", 30)
    access_log: str = setting("GATEWAY_ACCESS_LOG", "Where gunicorn writes its access log", "-")
    client_read_timeout: float = setting(
        "CLIENT_READ_TIMEOUT", "A request must arrive whole within this many seconds of its first byte; it is read "
        "ahead in the event loop, and only a whole request takes a thread (`gateway/worker.py`)", 15.0)
    client_write_timeout: float = setting("CLIENT_WRITE_TIMEOUT", "A client that stops reading its answer is "
                                          "dropped after this many seconds", 60.0)

    @classmethod
    def from_env(cls, env: Env | None = None) -> "ServingSettings":
        return load(cls, os.environ if env is None else env)
