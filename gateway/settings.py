"""The gateway's configuration: one frozen object, built from the environment here only."""

from __future__ import annotations

import dataclasses
import os

from protocol.contract import Limits
from protocol.transport import default_address


def _int(env, name, default):
    raw = env.get(name, "").strip()
    return int(raw) if raw else default


def _bool(env, name, default):
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name} must be true or false, got {raw!r}")


def _keys(env, prefix: str = "") -> tuple[str, ...]:
    keys = [k.strip() for k in env.get(f"{prefix}API_KEYS", "").split(",") if k.strip()]
    path = env.get(f"{prefix}API_KEYS_FILE", "").strip()
    if path:
        with open(path, encoding="utf-8") as f:
            keys += [line.strip() for line in f if line.strip() and not line.startswith("#")]
    return tuple(keys)


def _float(env, name, default):
    raw = env.get(name, "").strip()
    return float(raw) if raw else default


@dataclasses.dataclass(frozen=True)
class GatewaySettings:
    model_server: str = dataclasses.field(default_factory=default_address)  # as the model server's default bind
    # A reply or heartbeat must arrive within this; the model server beats every second.
    model_server_timeout: float = 5.0
    # Longest a synchronous request (/generate) waits for its image before giving up.
    sync_timeout: float = 3600.0
    max_prompt_length: int = 200
    default_steps: int = 25  # the "quality" preset's steps
    default_preset: str = "quality"  # for requests that name none (protocol/presets.py)
    max_steps: int = 100
    default_size: int = 512
    min_size: int = 64
    max_width: int = 1024
    max_height: int = 1024
    max_images: int = 4
    max_body_bytes: int = 64 * 1024
    cors_origins: tuple[str, ...] = ()
    sse_keepalive_seconds: float = 15.0
    # Base of absolute URLs handed out (OpenAI response_format=url); default: the request's host.
    public_url: str = ""
    api_keys: tuple[str, ...] = dataclasses.field(default=(), repr=False)  # empty: no auth
    # Keys that may also see and cancel every client's jobs (operators); valid keys in their own right.
    admin_api_keys: tuple[str, ...] = dataclasses.field(default=(), repr=False)
    # Reverse proxies in front of the gateway whose X-Forwarded-For is believed (compose's nginx: 1).
    # 0: the client is the connection's address. Used for rate limits and job ownership without keys.
    trusted_proxies: int = 0
    auth_public_health: bool = False  # with keys set, /health, /health/ready and /metrics need one too
    rate_limit_enabled: bool = True
    rate_limit_storage: str = "memory://"  # redis://host:6379/0 to share limits across workers
    rate_limit_generate: str = "30/minute"  # per client, across all generation routes
    rate_limit_read: str = "1200/minute"  # per client, status/events/images/health
    rate_limit_on_store_error: str = "memory"  # memory | open | closed

    @classmethod
    def from_env(cls, env=None) -> "GatewaySettings":
        env = os.environ if env is None else env
        d = cls()
        origins = tuple(o.strip() for o in env.get("CORS_ORIGINS", "").split(",") if o.strip())
        settings = cls(
            model_server=env.get("MODEL_SERVER_ADDRESS", "").strip() or default_address(env),
            model_server_timeout=_float(env, "MODEL_SERVER_TIMEOUT", d.model_server_timeout),
            sync_timeout=_float(env, "SYNC_TIMEOUT_SECONDS", d.sync_timeout),
            max_prompt_length=_int(env, "MAX_PROMPT_LENGTH", d.max_prompt_length),
            default_steps=_int(env, "DEFAULT_STEPS", d.default_steps),
            default_preset=env.get("DEFAULT_PRESET", d.default_preset).strip().lower() or d.default_preset,
            max_steps=_int(env, "MAX_STEPS", d.max_steps),
            default_size=_int(env, "DEFAULT_SIZE", d.default_size),
            max_width=_int(env, "MAX_WIDTH", d.max_width),
            max_height=_int(env, "MAX_HEIGHT", d.max_height),
            max_images=_int(env, "MAX_IMAGES_PER_REQUEST", d.max_images),
            max_body_bytes=_int(env, "MAX_BODY_BYTES", d.max_body_bytes),
            cors_origins=origins,
            sse_keepalive_seconds=_float(env, "SSE_KEEPALIVE_SECONDS", d.sse_keepalive_seconds),
            public_url=env.get("PUBLIC_URL", d.public_url).strip(),
            api_keys=_keys(env),
            admin_api_keys=_keys(env, "ADMIN_"),
            trusted_proxies=_int(env, "TRUSTED_PROXIES", d.trusted_proxies),
            auth_public_health=_bool(env, "AUTH_PUBLIC_HEALTH", d.auth_public_health),
            rate_limit_enabled=_bool(env, "RATE_LIMIT_ENABLED", d.rate_limit_enabled),
            rate_limit_storage=env.get("RATE_LIMIT_STORAGE", d.rate_limit_storage).strip() or d.rate_limit_storage,
            rate_limit_generate=env.get("RATE_LIMIT_GENERATE", d.rate_limit_generate),
            rate_limit_read=env.get("RATE_LIMIT_READ", d.rate_limit_read),
            rate_limit_on_store_error=env.get("RATE_LIMIT_ON_STORE_ERROR", d.rate_limit_on_store_error).strip(),
        )
        if settings.rate_limit_on_store_error not in ("memory", "open", "closed"):
            raise ValueError("RATE_LIMIT_ON_STORE_ERROR must be memory, open or closed")
        if "*" in settings.cors_origins:
            raise ValueError("CORS_ORIGINS must list origins; a wildcard is refused")
        settings.limits  # noqa: B018  (validates the bounds against the protocol's)
        return settings

    @property
    def limits(self) -> Limits:
        """The request bounds, as the model server reads them from the same variables."""
        return Limits(max_prompt_length=self.max_prompt_length, max_steps=self.max_steps, min_size=self.min_size,
                      max_width=self.max_width, max_height=self.max_height, max_images=self.max_images,
                      default_steps=self.default_steps, default_size=self.default_size,
                      default_preset=self.default_preset)
