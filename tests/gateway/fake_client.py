"""A scriptable stand-in for ModelClient, for gateway unit tests (no sockets, no processes)."""

from __future__ import annotations

import time

from gateway.model_client import ModelServerUnavailable, RemoteError, ServerView
from protocol.errors import ErrorCode
from protocol.messages import (Cancelled, Completed, ErrorInfo, Failed, ImageInfo, JobState, JobView, LoadStatus,
                               LoraEntry, ModelEntry, ModelList, ModelState, Pong, Progress, ProgressInfo,
                               StorageStatus)

PNG = b"\x89PNG\r\n\x1a\nfake"


class FakeModelClient:
    def __init__(self):
        self.jobs: dict[str, JobView] = {}
        self.owners: dict[str, str] = {}  # job id -> the client that submitted it
        self.init_images: dict[str, bytes] = {}
        self.masks: dict[str, tuple[bytes, str]] = {}
        self.control_images: dict[str, list[bytes]] = {}
        self.control_masks: dict[str, list[bytes]] = {}
        self.submitted = []
        self.cancelled = []
        self.finishes = 0  # jobs watched to their end (their finished_at)
        self.model_state = ModelState.READY
        self.outcome = JobState.SUCCEEDED  # what watch() ends with
        self.outcome_error: ErrorInfo | None = None  # the error it ends with, if not the usual one
        self.error: Exception | None = None  # raised by the next call (of ``error_on`` only, if set)
        self.error_on: str | None = None
        self.unavailable_presets: dict[str, str] = {}
        self.load: LoadStatus | None = None
        self.storage: StorageStatus | None = None
        self.details: list[str] = []  # what watch() reports before the first step (a model switch's phases)
        self.stats: dict[str, float] = {}
        self.models = [ModelEntry(name="fake-model", kind="folder", default=True, loaded=True,
                                  unavailable_presets={"turbo": "fake-model is not a one-step model"}),
                       ModelEntry(name="fake-turbo", kind="folder", one_step=True)]

    def _maybe_raise(self, method: str):
        if self.error is not None and self.error_on in (None, method):
            error, self.error = self.error, None
            raise error

    def will_raise(self, code: ErrorCode, retryable=False, retry_after=None, message="boom", hint="do X",
                   on: str | None = None):
        """The next call (of method ``on`` only, if given: a submit is preceded by the model list's lookup)
        raises this error."""
        self.error = RemoteError(ErrorInfo(code=code, message=message, hint=hint, retryable=retryable,
                                           retry_after=retry_after))
        self.error_on = on

    def will_be_unreachable(self, on: str | None = None):
        self.error = ModelServerUnavailable("the model server did not answer within 5 s")
        self.error_on = on

    def ping(self, timeout=None):
        self._maybe_raise("ping")
        return Pong(model="fake-model", model_state=self.model_state, optimizations={"dtype": "bfloat16"},
                    queue_depth=len(self.jobs), queue_capacity=8, schedulers=["default"],
                    unavailable_presets=self.unavailable_presets, load=self.load, storage=self.storage,
                    stats=self.stats)

    def list_models(self, timeout=None, answering_only=False):
        self._maybe_raise("list_models")
        return ModelList(models=self.models, loras=[LoraEntry(name="style", file="style.safetensors", size_bytes=10)])

    def servers(self, timeout=None):
        try:
            return [ServerView("ipc:///fake/model.sock", self.ping(timeout), True, 0.0)]
        except (ModelServerUnavailable, RemoteError) as exc:
            return [ServerView("ipc:///fake/model.sock", None, False, None, str(exc))]

    def submit(self, params, client_id="", request_id="", init_image=b"", mask=b"", mask_from="luminance",
               control_images=(), control_masks=()):
        self._maybe_raise("submit")
        job_id = f"job{len(self.jobs) + 1}"
        view = JobView(job_id=job_id, state=JobState.QUEUED, created_at=time.time(), params=params,
                       queue_position=1)
        self.jobs[job_id] = view
        self.owners[job_id] = client_id
        self.submitted.append((params, client_id, request_id))
        self.init_images[job_id] = init_image
        self.masks[job_id] = (mask, mask_from)
        self.control_images[job_id] = list(control_images)
        self.control_masks[job_id] = list(control_masks)
        return view

    def get_job(self, job_id, client_id=""):
        self._maybe_raise("get_job")
        if job_id not in self.jobs or client_id and self.owners.get(job_id) != client_id:
            raise RemoteError(ErrorInfo(code=ErrorCode.NOT_FOUND, message=f"no job {job_id}", hint="check"))
        return self.jobs[job_id]

    def cancel(self, job_id, mode=None, client_id=""):
        view = self.get_job(job_id, client_id)
        self.cancelled.append(job_id)
        self.jobs[job_id] = view = _replace(view, state=JobState.CANCELLED)
        return view

    def delete(self, job_id, client_id=""):
        view = self.get_job(job_id, client_id)
        del self.jobs[job_id]
        return view

    def unfinished_jobs(self, client_id=""):
        self._maybe_raise("unfinished_jobs")
        return [view for job_id, view in self.jobs.items()
                if not view.state.terminal and (not client_id or self.owners.get(job_id) == client_id)]

    def finished_jobs(self, limit, client_id=""):
        self._maybe_raise("finished_jobs")
        done = [view for job_id, view in self.jobs.items()
                if view.state.terminal and (not client_id or self.owners.get(job_id) == client_id)]
        return sorted(done, key=lambda v: v.finished_at or 0.0, reverse=True)[:limit]

    def task_jobs(self, task, client_id=""):
        self._maybe_raise("task_jobs")
        return [view for job_id, view in self.jobs.items()
                if view.params.task == task and (not client_id or self.owners.get(job_id) == client_id)]

    def fetch_preview(self, job_id, client_id=""):
        view = self.get_job(job_id, client_id)
        if view.state is not JobState.RUNNING or not view.params.preview:  # as the model server says
            raise RemoteError(ErrorInfo(code=ErrorCode.NOT_FOUND, message=f"job {job_id} has no preview",
                                        hint="Previews exist while a job that asked for them is running."))
        return ImageInfo(index=0, seed=0, media_type="image/jpeg", width=8, height=8, size_bytes=4), b"jpeg"

    def fetch(self, job_id, index=0, client_id=""):
        self._maybe_raise("fetch")
        p = self.get_job(job_id, client_id).params
        return ImageInfo(index=index, seed=p.seed + index, media_type="image/png", width=p.width,
                         height=p.height, size_bytes=len(PNG)), PNG

    def watch(self, job_id, client_id=""):
        self._maybe_raise("watch")
        view = self.get_job(job_id, client_id)
        for detail in self.details:
            yield Progress(job=_replace(view, state=JobState.RUNNING, queue_position=None, progress=ProgressInfo(
                step=0, total_steps=view.params.steps, detail=detail)))
        running = _replace(view, state=JobState.RUNNING, queue_position=None,
                           progress=ProgressInfo(step=1, total_steps=view.params.steps))
        yield Progress(job=running)
        self.finishes += 1  # strictly increasing, so "newest first" is never a tie
        final = _replace(running, state=self.outcome, finished_at=1_800_000_000.0 + self.finishes)
        if self.outcome is JobState.SUCCEEDED:
            final = _replace(final, images=[self.fetch(job_id, i)[0] for i in range(view.params.n)])
        if self.outcome is JobState.FAILED:
            final = _replace(final, error=ErrorInfo(code=ErrorCode.OUT_OF_MEMORY, message="ran out of memory",
                                                    hint="Try a smaller size.", retryable=True))
        if self.outcome_error is not None:
            final = _replace(final, error=self.outcome_error)
        self.jobs[job_id] = final
        yield {JobState.SUCCEEDED: Completed, JobState.FAILED: Failed, JobState.CANCELLED: Cancelled}[self.outcome](
            job=final)


def _replace(view: JobView, **changes) -> JobView:
    import msgspec

    return msgspec.structs.replace(view, **changes)
