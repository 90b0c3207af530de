"""One job as the table holds it, and its conversion to and from the record on disk."""

from __future__ import annotations

import dataclasses
from typing import Any

from model_server.jobs.outputs import JobRecord
from protocol.messages import (ErrorInfo, GenerationParams, ImageInfo, JobMemory, JobState, ModelSwitch, StopMode,
                               steps_run)


@dataclasses.dataclass
class Job:
    """A job's state, progress, result and owner, as the table holds it (guarded by the table's lock)."""

    id: str
    params: GenerationParams
    created_at: float
    client_id: str = ""  # who submitted it, and so who may see it ("" = any operator)
    request_id: str = ""
    state: JobState = JobState.QUEUED
    started_at: float | None = None
    finished_at: float | None = None
    finished_mono: float | None = None
    image_index: int = 0
    step: int = 0
    seconds_per_step: float | None = None
    error: ErrorInfo | None = None
    images: list[tuple[ImageInfo, bytes | None]] = dataclasses.field(default_factory=list)  # None: on disk
    files: list[str] = dataclasses.field(default_factory=list)  # the images in the OutputStore
    not_stored: str = ""  # why its images are not on disk (the write failed); served from memory
    stop_mode: StopMode | None = None
    stop_error: ErrorInfo | None = None  # why it was cancelled, when not at a client's request
    interrupted: bool = False
    engine: str = ""  # what ran its UNet (Pipeline.engine), set when it starts
    model: str = ""  # the model that ran it, set when it starts
    model_switch: ModelSwitch | None = None  # when it had to load its model first
    lora_hashes: dict[str, str] = dataclasses.field(default_factory=dict)  # LoRA name -> A1111 short hash
    detail: str = ""  # what it does before its first step when that takes a while (loading its model)
    preview: tuple[int, bytes] | None = None  # (step, JPEG) of the latest preview
    finishing: bool = False  # the table is writing its result; it turns terminal right after
    awaiting_uploads: bool = False  # queued at a crash with uploads: waits for its gateway to send them again
    init_image: Any = None  # img2img and inpaint: the decoded, resized PIL image (memory only, never on disk)
    mask: Any = None  # inpaint: an L image, white where to repaint
    # One per control unit: its decoded image (RGB, its own size), or None for the init image's (memory only).
    control_images: list = dataclasses.field(default_factory=list)
    control_masks: list = dataclasses.field(default_factory=list)  # one per unit: an L image, or None (memory only)
    memory: JobMemory | None = None  # its predicted peak (at submit) and measured one (once it ended)
    tiles: int = 0  # an upscale job's tiles, its "steps" (known once it starts)
    step_seconds: float = 0.0  # the timed steps' total, and how many (the measured speeds, jobs/speed.py)
    timed_steps: int = 0

    @property
    def cancel_requested(self) -> bool:
        return self.stop_mode is StopMode.CANCEL

    @property
    def total_steps(self) -> int:
        """Steps per image actually run (image-to-image runs steps x strength; an upscale job, its tiles)."""
        return self.tiles if self.params.mode == "upscale" else steps_run(self.params)

    @property
    def result_bytes(self) -> int:
        return sum(len(data) for _, data in self.images if data is not None)

    def visible_to(self, owner: str) -> bool:
        return not owner or self.client_id == owner

    def record(self) -> JobRecord:
        return JobRecord(job_id=self.id, state=self.state, params=self.params, created_at=self.created_at,
                         client_id=self.client_id, request_id=self.request_id, started_at=self.started_at,
                         finished_at=self.finished_at, error=self.error, images=[i for i, _ in self.images],
                         files=list(self.files), interrupted=self.interrupted, engine=self.engine,
                         model=self.model, model_switch=self.model_switch, lora_hashes=dict(self.lora_hashes),
                         not_stored=self.not_stored)

    @classmethod
    def from_record(cls, r: JobRecord) -> "Job":
        return cls(id=r.job_id, params=r.params, created_at=r.created_at, client_id=r.client_id,
                   request_id=r.request_id, state=r.state, started_at=r.started_at, finished_at=r.finished_at,
                   error=r.error, images=[(info, None) for info in r.images], files=list(r.files),
                   interrupted=r.interrupted, engine=r.engine, model=r.model, model_switch=r.model_switch,
                   lora_hashes=dict(r.lora_hashes), not_stored=r.not_stored)
