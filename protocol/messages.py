"""Every message that crosses the gateway <-> model-server boundary.

Requests are imperative (``Ping``, ``Submit``, ...); replies and events are nouns or past
tense (``Pong``, ``Accepted``, ``Progress``, ``Completed``...). Each is a msgspec Struct tagged
with its class name, so a decoder knows the type without guessing. Within protocol version 1
changes are additive only: new fields must have defaults, no field changes type, no tag is
renamed (``tests/protocol/test_golden.py`` keeps committed v1 bytes decoding).
"""

from __future__ import annotations

import enum
from typing import Union

import msgspec

from protocol.errors import ErrorCode


class JobState(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


class StopMode(str, enum.Enum):
    """How to stop a running job: drop it, or keep what it has (AUTOMATIC1111's interrupt/skip)."""

    CANCEL = "cancel"  # stop at the next step; the job ends cancelled, nothing decoded
    INTERRUPT = "interrupt"  # stop at the next step, decode what is there; no further images
    SKIP = "skip"  # like interrupt for the current image only; the next images still run


class ModelState(str, enum.Enum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"
    STOPPING = "stopping"


# Scheduler names both sides agree on; "default" is the model's own (PNDM for SD v1.4).
# "lcm" is for LCM-distilled weights (the "fast" preset's LCM-LoRA); other weights give mush with it.
SCHEDULERS = ("default", "pndm", "ddim", "euler", "euler_a", "dpmpp_2m", "dpmpp_2m_karras", "unipc", "lcm")
IMAGE_FORMATS = ("png", "jpeg", "webp")
# token_merging above this: most tokens share one output and detail dissolves (both sides refuse it)
MAX_TOKEN_MERGING = 0.75


class _Shape(msgspec.Struct, kw_only=True):
    """Base of the shapes messages carry; unknown fields from a newer peer are ignored."""


class _Msg(_Shape, tag=True, omit_defaults=True):
    """Base of messages: tagged with the class name, so the decoder knows the type."""


# --- shared shapes -------------------------------------------------------------------------


class ErrorInfo(_Shape):
    code: ErrorCode
    message: str
    hint: str = ""
    retryable: bool = False
    retry_after: float | None = None


class GenerationParams(_Shape):
    """One text-to-image request, already validated and with a concrete seed."""

    prompt: str
    seed: int
    negative_prompt: str = ""
    steps: int = 25
    guidance_scale: float = 7.5
    width: int = 512
    height: int = 512
    scheduler: str = "default"
    n: int = 1
    format: str = "png"
    quality: int = 90
    preview: bool = False  # make a cheap low-res preview from the latents after each step
    preset: str = ""  # a protocol.presets name; "" (older gateways) = no LCM-LoRA, full VAE
    deep_cache: int = 0  # UNet in full every Nth step, shallow layers only in between; 0 or 1 = off
    token_merging: float = 0.0  # share of tokens merged before the largest self-attentions (ToMe); 0 = off


class ProgressInfo(_Shape):
    step: int = 0
    total_steps: int = 0
    image_index: int = 0
    seconds_per_step: float | None = None
    eta_seconds: float | None = None
    elapsed_seconds: float = 0.0
    preview_step: int | None = None  # the step the latest preview shows (FetchPreview gets it)


class ImageInfo(_Shape):
    index: int
    seed: int
    media_type: str
    width: int
    height: int
    size_bytes: int


class JobView(_Shape):
    """What anyone may know about a job; shared by replies and events."""

    job_id: str
    state: JobState
    created_at: float
    params: GenerationParams
    queue_position: int | None = None
    started_at: float | None = None
    finished_at: float | None = None
    progress: ProgressInfo | None = None
    error: ErrorInfo | None = None
    images: list[ImageInfo] = []
    cancel_requested: bool = False
    interrupted: bool = False  # finished early by an interrupt/skip; images hold what was made


# --- requests (gateway -> model server) ----------------------------------------------------


class Ping(_Msg):
    pass


class Submit(_Msg):
    params: GenerationParams
    client_id: str = ""
    request_id: str = ""


class GetJob(_Msg):
    job_id: str


class Watch(_Msg):
    """Subscribe to a job: the server streams Progress, then exactly one terminal event."""

    job_id: str


class FetchResult(_Msg):
    job_id: str
    index: int = 0


class FetchPreview(_Msg):
    """The latest low-res preview of a job that asked for previews; answered with a Result."""

    job_id: str


class Cancel(_Msg):
    job_id: str
    mode: StopMode = StopMode.CANCEL


# --- replies and events (model server -> gateway) ------------------------------------------


class Pong(_Msg):
    model: str
    model_state: ModelState
    device: str = "cpu"
    optimizations: dict[str, str | int | float | bool | None] = {}
    queue_depth: int = 0
    queue_capacity: int = 0
    running_job: str | None = None
    rss_bytes: int = 0
    peak_rss_bytes: int = 0
    load_seconds: float | None = None
    uptime_seconds: float = 0.0
    error: ErrorInfo | None = None
    schedulers: list[str] = []
    pid: int = 0
    available_bytes: int | None = None  # memory the machine/container still has
    stats: dict[str, float] = {}  # monotonic counters since start (jobs by outcome, steps, seconds...)
    unavailable_presets: dict[str, str] = {}  # preset name -> why this server cannot run it


class Accepted(_Msg):
    job: JobView


class JobInfo(_Msg):
    job: JobView


class Progress(_Msg):
    job: JobView


class Completed(_Msg):
    job: JobView


class Failed(_Msg):
    job: JobView


class Cancelled(_Msg):
    job: JobView


class Result(_Msg):
    """Metadata of one image; the encoded image bytes travel in the next frame."""

    job_id: str
    image: ImageInfo


class Rejected(_Msg):
    """A request the server would not carry out (unknown job, queue full, not ready...)."""

    error: ErrorInfo


Request = Union[Ping, Submit, GetJob, Watch, FetchResult, Cancel, FetchPreview]
Reply = Union[Pong, Accepted, JobInfo, Progress, Completed, Failed, Cancelled, Result, Rejected]
TERMINAL_EVENTS = (Completed, Failed, Cancelled)


class Envelope(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Carries one message and the sender's correlation number, echoed in every reply."""

    ref: int
    body: Union[Request, Reply]


__all__ = [name for name in dir() if not name.startswith("_") and name[0].isupper()]
