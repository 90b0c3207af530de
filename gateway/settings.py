"""The gateway's configuration: one frozen object, built from the environment here only."""

from __future__ import annotations

import dataclasses
import os


def _int(env, name, default):
    raw = env.get(name, "").strip()
    return int(raw) if raw else default


def _float(env, name, default):
    raw = env.get(name, "").strip()
    return float(raw) if raw else default


@dataclasses.dataclass(frozen=True)
class GatewaySettings:
    model_server: str = "tcp://127.0.0.1:5555"
    # A reply or heartbeat must arrive within this; the model server beats every second.
    model_server_timeout: float = 5.0
    # Longest a synchronous request (/generate) waits for its image before giving up.
    sync_timeout: float = 3600.0
    max_prompt_length: int = 200
    default_steps: int = 25
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

    @classmethod
    def from_env(cls, env=None) -> "GatewaySettings":
        env = os.environ if env is None else env
        d = cls()
        origins = tuple(o.strip() for o in env.get("CORS_ORIGINS", "").split(",") if o.strip())
        settings = cls(
            model_server=env.get("MODEL_SERVER_ADDRESS", d.model_server),
            model_server_timeout=_float(env, "MODEL_SERVER_TIMEOUT", d.model_server_timeout),
            sync_timeout=_float(env, "SYNC_TIMEOUT_SECONDS", d.sync_timeout),
            max_prompt_length=_int(env, "MAX_PROMPT_LENGTH", d.max_prompt_length),
            default_steps=_int(env, "DEFAULT_STEPS", d.default_steps),
            max_steps=_int(env, "MAX_STEPS", d.max_steps),
            default_size=_int(env, "DEFAULT_SIZE", d.default_size),
            max_width=_int(env, "MAX_WIDTH", d.max_width),
            max_height=_int(env, "MAX_HEIGHT", d.max_height),
            max_images=_int(env, "MAX_IMAGES_PER_REQUEST", d.max_images),
            max_body_bytes=_int(env, "MAX_BODY_BYTES", d.max_body_bytes),
            cors_origins=origins,
            sse_keepalive_seconds=_float(env, "SSE_KEEPALIVE_SECONDS", d.sse_keepalive_seconds),
            public_url=env.get("PUBLIC_URL", d.public_url).strip(),
        )
        if "*" in settings.cors_origins:
            raise ValueError("CORS_ORIGINS must list origins; a wildcard is refused")
        if settings.default_size % 8 or not settings.min_size <= settings.default_size <= min(
                settings.max_width, settings.max_height):
            raise ValueError("DEFAULT_SIZE must be a multiple of 8 within MAX_WIDTH/MAX_HEIGHT")
        return settings
