"""The HTTP representation of jobs, separate from the wire protocol so each can evolve alone."""

from __future__ import annotations

import msgspec

from protocol.messages import (ErrorInfo, GenerationParams, ImageInfo, JobMemory, JobState, JobView, ModelSwitch,
                               ProgressInfo, WebhookStatus)


class ImageLink(msgspec.Struct, kw_only=True):
    index: int
    seed: int
    media_type: str
    width: int
    height: int
    size_bytes: int
    url: str
    control_map: int | None = None  # the control unit whose detected map this is (its return_map); None: generated


class JobError(msgspec.Struct, kw_only=True):
    code: str
    message: str
    hint: str = ""
    retryable: bool = False


class JobResource(msgspec.Struct, kw_only=True):
    """A job as the job API shows it."""

    id: str
    state: JobState
    created_at: float
    params: GenerationParams
    queue_position: int | None = None
    started_at: float | None = None
    finished_at: float | None = None
    progress: ProgressInfo | None = None
    error: JobError | None = None
    images: list[ImageLink] = []
    cancel_requested: bool = False
    interrupted: bool = False
    engine: str = ""  # what ran the UNet; says so when a request's options moved it off the usual one
    model: str = ""  # the model that ran it (set when it starts)
    model_switch: ModelSwitch | None = None  # when it loaded its model first: from what, seconds, memory after
    lora_hashes: dict[str, str] = {}  # each applied LoRA's A1111 short hash
    # False when the outputs disk failed: the images are served from memory until evicted or a
    # restart, and storage_error says why. True otherwise (also while unfinished).
    stored: bool = True
    storage_error: str = ""
    webhook: WebhookStatus | None = None  # its callback_url's delivery, once the job has ended
    memory: JobMemory | None = None  # its peak predicted at submit (the memory budget) and measured once it ended
    links: dict[str, str] = {}


class ErrorBody(msgspec.Struct, kw_only=True):
    error: str
    code: str
    hint: str
    field: str | None = None
    retry_after: float | None = None


def _image_link(job_id: str, info: ImageInfo) -> ImageLink:
    return ImageLink(index=info.index, seed=info.seed, media_type=info.media_type, width=info.width,
                     height=info.height, size_bytes=info.size_bytes,
                     url=f"/v1/jobs/{job_id}/image?index={info.index}", control_map=info.control_map)


def _job_error(error: ErrorInfo | None) -> JobError | None:
    if error is None:
        return None
    return JobError(code=error.code.value, message=error.message, hint=error.hint, retryable=error.retryable)


def job_resource(view: JobView) -> JobResource:
    base = f"/v1/jobs/{view.job_id}"
    links = {"self": base, "events": f"{base}/events"}
    if view.state is JobState.SUCCEEDED:
        links["image"] = f"{base}/image"
    return JobResource(
        id=view.job_id, state=view.state, created_at=view.created_at, params=view.params,
        queue_position=view.queue_position, started_at=view.started_at, finished_at=view.finished_at,
        progress=view.progress, error=_job_error(view.error),
        images=[_image_link(view.job_id, i) for i in view.images], cancel_requested=view.cancel_requested,
        interrupted=view.interrupted, engine=view.engine, model=view.model, model_switch=view.model_switch,
        lora_hashes=view.lora_hashes, stored=not view.not_stored, storage_error=view.not_stored,
        webhook=view.webhook, memory=view.memory, links=links)


def steps_done(job: JobView) -> tuple[int, int]:
    """(steps done, steps in all) over a job's images: both hires passes count, an upscale job's tiles are its
    steps, and before the job starts its own steps stand for the total. What every API's progress is made of."""
    p = job.progress
    steps = (p.total_steps if p and p.total_steps else job.params.steps) or 1
    return (p.image_index * steps + p.step) if p else 0, max(1, job.params.n) * steps


def to_json(obj) -> bytes:
    return msgspec.json.encode(obj)
