"""The model server's configuration: one frozen object, built from the environment here only."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from protocol.contract import Limits
from protocol.transport import check_bind, default_address

DEFAULT_MODEL = "CompVis/stable-diffusion-v1-4"


def _env_int(env, name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    return int(raw) if raw else default


def _env_float(env, name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    return float(raw) if raw else default


def _env_bool(env, name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name} must be true or false, got {raw!r}")


def read_token(env) -> str | None:
    """The Hugging Face token: HF_TOKEN, its alias HF_AUTH_TOKEN, or a file (Docker secrets)."""
    for name in ("HF_TOKEN", "HF_AUTH_TOKEN"):
        value = env.get(name, "").strip()
        if value:
            return value
    path = env.get("HF_TOKEN_FILE", "").strip()
    if path:
        text = Path(path).read_text(encoding="utf-8").strip()
        return text or None
    return None


@dataclasses.dataclass(frozen=True)
class ModelServerSettings:
    # Default: a Unix socket in a private runtime directory (protocol.transport); tcp:// on loopback
    # when asked for; beyond loopback only with allow_remote (the socket has no authentication).
    bind: str = dataclasses.field(default_factory=default_address)
    allow_remote: bool = False
    pipeline: str = "diffusers"  # "diffusers" or "fake" (torch-free, for tests and smoke runs)
    model: str = DEFAULT_MODEL  # hub id, local directory, or "tiny"
    revision: str | None = None
    token: str | None = dataclasses.field(default=None, repr=False)  # never logged
    cache_dir: str = str(Path.home() / ".cache" / "sd-cpu")
    dtype: str = "auto"  # auto | float32 | bfloat16
    attention: str = "sdpa"  # sdpa | sliced
    threads: int = 0  # 0 = physical cores available to this process
    safety_checker: bool = False
    # bf16 only: convert once to a cached bf16 copy in a child process, so the server never holds
    # fp32 and bf16 weights at once (the load peak drops from ~5.3 to ~2.5 GB for SD v1.4).
    bf16_cache: bool = True
    channels_last: bool | None = None  # NHWC UNet/VAE convolution weights; None = auto (cpu.channels_last_pays)
    # Mapped weights dropped from resident memory after their phase of each job (residency.py):
    # "text_encoder", "all" (text encoder, then the UNet before the VAE decode) or "none".
    release_idle_weights: str = "all"
    # The "fast" preset's parts: hub id or directory, "auto" (the SD v1 ones; the locally made
    # tiny ones for SD_MODEL=tiny), or "none". Loaded on the first fast job; a failure only
    # disables the preset.
    lcm_lora: str = "auto"
    tiny_vae: str = "auto"
    queue_size: int = 16
    result_ttl_seconds: float = 86400.0  # a day: images, records and ids, in memory and on disk
    result_budget_bytes: int = 256 * 1024 * 1024
    heartbeat_seconds: float = 1.0
    shutdown_grace_seconds: float = 5.0
    fake_step_seconds: float = 0.01
    # The configurable request bounds, read from the same variables as the gateway's (MAX_STEPS,
    # MAX_WIDTH, MAX_HEIGHT, MAX_PROMPT_LENGTH, MAX_IMAGES_PER_REQUEST): a peer that skips the
    # gateway still cannot ask for more.
    limits: Limits = Limits()
    max_queued_per_client: int = 4  # 0 = no per-client cap
    min_free_memory_mb: int = 0  # refuse new jobs below this much free memory; 0 = off
    outputs_dir: str = ""  # "" = keep images in memory only (python -m model_server defaults to ./outputs)
    outputs_budget_bytes: int = 2 * 1024**3

    @classmethod
    def from_env(cls, env=None) -> "ModelServerSettings":
        env = os.environ if env is None else env
        d = cls()
        return cls(
            bind=env.get("MODEL_SERVER_BIND", "").strip() or default_address(env),
            allow_remote=_env_bool(env, "MODEL_SERVER_ALLOW_REMOTE", d.allow_remote),
            pipeline=env.get("MODEL_SERVER_PIPELINE", d.pipeline).strip().lower(),
            model=env.get("SD_MODEL", d.model).strip() or d.model,
            revision=env.get("SD_MODEL_REVISION", "").strip() or None,
            token=read_token(env),
            cache_dir=env.get("SD_CACHE_DIR", d.cache_dir),
            dtype=env.get("SD_DTYPE", d.dtype).strip().lower(),
            attention=env.get("SD_ATTENTION", d.attention).strip().lower(),
            threads=_env_int(env, "SD_THREADS", d.threads),
            safety_checker=_env_bool(env, "SD_SAFETY_CHECKER", d.safety_checker),
            bf16_cache=_env_bool(env, "SD_BF16_CACHE", d.bf16_cache),
            channels_last=(None if env.get("SD_CHANNELS_LAST", "").strip().lower() in ("", "auto")
                           else _env_bool(env, "SD_CHANNELS_LAST", False)),
            release_idle_weights=env.get("SD_RELEASE_IDLE_WEIGHTS", d.release_idle_weights).strip().lower(),
            lcm_lora=env.get("SD_LCM_LORA", d.lcm_lora).strip() or "none",
            tiny_vae=env.get("SD_TINY_VAE", d.tiny_vae).strip() or "none",
            queue_size=_env_int(env, "MODEL_SERVER_QUEUE_SIZE", d.queue_size),
            result_ttl_seconds=_env_float(env, "RESULT_TTL_SECONDS", d.result_ttl_seconds),
            result_budget_bytes=_env_int(env, "RESULT_BUDGET_BYTES", d.result_budget_bytes),
            heartbeat_seconds=_env_float(env, "MODEL_SERVER_HEARTBEAT_SECONDS", d.heartbeat_seconds),
            shutdown_grace_seconds=_env_float(env, "SHUTDOWN_GRACE_SECONDS", d.shutdown_grace_seconds),
            fake_step_seconds=_env_float(env, "FAKE_STEP_SECONDS", d.fake_step_seconds),
            limits=Limits.from_env(env),
            max_queued_per_client=_env_int(env, "MAX_QUEUED_PER_CLIENT", d.max_queued_per_client),
            min_free_memory_mb=_env_int(env, "MIN_FREE_MEMORY_MB", d.min_free_memory_mb),
            outputs_dir=env.get("OUTPUTS_DIR", "outputs").strip(),
            outputs_budget_bytes=_env_int(env, "OUTPUTS_BUDGET_BYTES", d.outputs_budget_bytes),
        ).validated()

    def validated(self) -> "ModelServerSettings":
        if self.pipeline not in ("diffusers", "fake"):
            raise ValueError(f"MODEL_SERVER_PIPELINE must be diffusers or fake, got {self.pipeline!r}")
        if self.dtype not in ("auto", "float32", "bfloat16"):
            raise ValueError(f"SD_DTYPE must be auto, float32 or bfloat16, got {self.dtype!r}")
        if self.attention not in ("sdpa", "sliced"):
            raise ValueError(f"SD_ATTENTION must be sdpa or sliced, got {self.attention!r}")
        if self.release_idle_weights not in ("text_encoder", "all", "none"):
            raise ValueError("SD_RELEASE_IDLE_WEIGHTS must be text_encoder, all or none, "
                             f"got {self.release_idle_weights!r}")
        check_bind(self.bind, self.allow_remote)
        if self.queue_size < 1:
            raise ValueError("MODEL_SERVER_QUEUE_SIZE must be at least 1")
        return self
