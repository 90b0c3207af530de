"""Every error the model server sends, written once: one factory per situation, and one exception.

A gateway maps the codes onto HTTP statuses; the message says what happened and the hint what
to do. Code that fails with one of these raises :class:`Rejection` (or a subclass) carrying it.
"""

from __future__ import annotations

import re

from protocol.errors import ErrorCode, ProtocolError
from protocol.messages import ErrorInfo, LoadStatus
from protocol.presets import PRESETS

_RETRY_SOON = 5.0


class Rejection(Exception):
    """Fails with an ErrorInfo: the request or job cannot be carried out, and this says why."""

    def __init__(self, error: ErrorInfo):
        super().__init__(error.message)
        self.error = error


# --- jobs by id ------------------------------------------------------------------------------


def not_found(job_id: str) -> Rejection:
    return Rejection(ErrorInfo(
        code=ErrorCode.NOT_FOUND, message=f"no job with id {job_id[:64]!r}",
        hint="Check the id: it is the one POST /v1/jobs returned to you. Finished jobs are kept for "
             "RESULT_TTL_SECONDS, across restarts, unless deleted."))


def expired(job_id: str, ttl_seconds: float) -> Rejection:
    return Rejection(ErrorInfo(code=ErrorCode.EXPIRED, message=f"job {job_id} has expired",
                               hint=f"Results are kept for {ttl_seconds:g} s; submit the job again."))


def not_finished(job_id: str) -> Rejection:
    return Rejection(ErrorInfo(code=ErrorCode.INVALID_PARAMS, message=f"job {job_id} is not finished",
                               hint="Cancel it first; a finished job can be deleted."))


def no_image(job_id: str, state: str, terminal: bool) -> Rejection:
    return Rejection(ErrorInfo(
        code=ErrorCode.NOT_FOUND if terminal else ErrorCode.NOT_READY,
        message=f"job {job_id} has no image ({state})",
        hint="Wait for the job to succeed; watch its events or poll its status.", retryable=not terminal))


def no_such_image(job_id: str, index: int, count: int) -> Rejection:
    return Rejection(ErrorInfo(code=ErrorCode.NOT_FOUND, message=f"job {job_id} has no image {index}",
                               hint=f"Image indexes run from 0 to {count - 1}."))


def image_gone(job_id: str, index: int) -> Rejection:
    return Rejection(ErrorInfo(code=ErrorCode.EXPIRED, message=f"image {index} of job {job_id} is gone",
                               hint="It was deleted to keep the outputs folder within its budget."))


def no_preview(job_id: str) -> Rejection:
    return Rejection(ErrorInfo(
        code=ErrorCode.NOT_FOUND, message=f"job {job_id} has no preview",
        hint="Previews exist while a job that asked for them (preview: true) is running."))


# --- admission ---------------------------------------------------------------------------------


def invalid(message: str, hint: str, field: str = "") -> Rejection:
    return Rejection(ErrorInfo(code=ErrorCode.INVALID_PARAMS, message=message, hint=hint, field=field))


def queue_full(capacity: int, retry_after: float) -> Rejection:
    return Rejection(ErrorInfo(
        code=ErrorCode.QUEUE_FULL, message=f"the queue is full ({capacity} jobs waiting)",
        hint="Retry later, or lower steps/size so jobs finish sooner.", retryable=True, retry_after=retry_after))


def not_releasable(job_id: str, state: str) -> Rejection:
    return Rejection(ErrorInfo(
        code=ErrorCode.INVALID_PARAMS, message=f"job {job_id} is {state}; only a queued job can be given back",
        hint="It stays on this server."))


def duplicate_job(job_id: str) -> Rejection:
    return Rejection(ErrorInfo(
        code=ErrorCode.INVALID_PARAMS, message=f"job {job_id} already exists on this model server",
        hint="A job placed again keeps its id only where that id is new; submit it without one."))


def foreign_job_id(job_id: str, server_id: str) -> Rejection:
    return Rejection(ErrorInfo(
        code=ErrorCode.INVALID_PARAMS, message=f"job id {job_id} carries this model server's prefix {server_id}",
        hint="Only a job placed again after its own server died keeps its id; this server makes its own ids."))


def client_queue_full(mine: int, cap: int, retry_after: float) -> Rejection:
    return Rejection(ErrorInfo(
        code=ErrorCode.QUEUE_FULL, message=f"you already have {mine} jobs waiting (the limit per client is {cap})",
        hint="Wait for one of your jobs to start, or cancel one, then submit again.", retryable=True,
        retry_after=retry_after))


def still_loading(waited: float, load: LoadStatus | None = None) -> Rejection:
    doing = ""
    if load is not None and load.phase != "done":
        doing = f": {load.phase}"
        if load.percent is not None:
            doing += f" {load.percent:.0f}%"
        if load.eta_seconds is not None:
            doing += f", about {load.eta_seconds:.0f} s left"
    return Rejection(ErrorInfo(
        code=ErrorCode.NOT_READY, message=f"the model is still loading ({waited:.0f} s so far{doing})",
        hint="Retry in a few seconds; GET /health/ready turns 200 when it is loaded.", retryable=True,
        retry_after=_RETRY_SOON))


def load_failed(error: ErrorInfo | None) -> Rejection:
    return Rejection(ErrorInfo(code=ErrorCode.NOT_READY,
                               message=error.message if error else "model failed to load",
                               hint=error.hint if error else "See the model server log.", retryable=False))


def out_of_memory_floor(available_mb: int, floor_mb: int) -> Rejection:
    return Rejection(ErrorInfo(
        code=ErrorCode.OUT_OF_MEMORY, message=f"only {available_mb} MB of memory is free (the floor is {floor_mb} MB)",
        hint="Close other programs or wait for running work to finish; smaller images need less.",
        retryable=True, retry_after=30.0))


def over_budget(needed: str, budget: str, source: str, advice: str, field: str) -> Rejection:
    return Rejection(ErrorInfo(
        code=ErrorCode.OVER_BUDGET, field=field,
        message=f"this job would need about {needed} of memory at its peak, over this server's budget of {budget} "
                f"({source})", hint=advice))


def disk_low(free_mb: int, mark_mb: int) -> Rejection:
    return Rejection(ErrorInfo(
        code=ErrorCode.DISK_FULL, message=f"only {free_mb} MB is free on the outputs disk (the mark is {mark_mb} MB)",
        hint="Retry later; the operator must free disk space, lower OUTPUTS_BUDGET_BYTES or RESULT_TTL_SECONDS.",
        retryable=True, retry_after=60.0))


def shutting_down(message: str = "the model server is shutting down") -> ErrorInfo:
    """Refused, failed while queued, or stopped while running by a shutdown: always retryable."""
    return ErrorInfo(code=ErrorCode.SHUTTING_DOWN, message=message, retryable=True, retry_after=_RETRY_SOON,
                     hint="Submit the job again in a few seconds; the model server restarts.")


# --- outcomes of jobs ------------------------------------------------------------------------


def cancelled() -> ErrorInfo:
    return ErrorInfo(code=ErrorCode.CANCELLED, message="the job was cancelled", hint="Submit it again if needed.")


def model_server_lost() -> ErrorInfo:
    return ErrorInfo(code=ErrorCode.MODEL_SERVER_LOST, retryable=True, retry_after=_RETRY_SOON,
                     message="the model server stopped before this job finished",
                     hint="Submit the job again; nothing else was lost.")


def out_of_memory() -> ErrorInfo:
    return ErrorInfo(code=ErrorCode.OUT_OF_MEMORY, message="the model server ran out of memory",
                     hint="Try a smaller width/height or fewer images per request.", retryable=True)


def generation_failed(exc: BaseException) -> ErrorInfo:
    return ErrorInfo(code=ErrorCode.PIPELINE_ERROR, message=f"generation failed ({type(exc).__name__})",
                     hint="Try a shorter prompt or other parameters; the model server log has details.")


# --- the protocol ----------------------------------------------------------------------------


def undecodable(exc: ProtocolError, protocol_id: str) -> ErrorInfo:
    """A message the codec refused: a contract violation (invalid params) or not our protocol."""
    hint = ("The parameters break the protocol's bounds (protocol.messages.GenerationParams)."
            if exc.code is ErrorCode.INVALID_PARAMS else f"Both sides must speak {protocol_id}.")
    return ErrorInfo(code=exc.code, message=str(exc), hint=hint)


def not_a_request(name: str) -> Rejection:
    return Rejection(ErrorInfo(code=ErrorCode.PROTOCOL_MISMATCH, message=f"{name} is not a request", hint=""))


def handling_failed(name: str) -> ErrorInfo:
    return ErrorInfo(code=ErrorCode.PIPELINE_ERROR, message=f"the model server failed to handle {name}",
                     hint="The model server log has details.")


# --- the pipeline ----------------------------------------------------------------------------


class PipelineLoadError(Rejection):
    """The model, or a part loaded on first use, could not be loaded; says why and what to do."""


_ABS_PATH = re.compile(r"(?<![\w.])/(?:[\w.+-]+/)+([\w.+-]+)")


def redact_paths(text: str) -> str:
    """No internal paths (library messages name cache files) in what users see: a path keeps its last part."""
    return _ABS_PATH.sub(r"…/\1", text)


def redact(text: str, token: str | None) -> str:
    """No token and no internal paths (library messages name cache files) in what users see."""
    text = redact_paths(text)
    return text.replace(token, "***") if token else text


def load_error(message: str, hint: str) -> PipelineLoadError:
    return PipelineLoadError(ErrorInfo(code=ErrorCode.NOT_READY, message=message, hint=hint))


def load_crashed(exc: BaseException) -> ErrorInfo:
    return ErrorInfo(code=ErrorCode.NOT_READY, message=f"model load failed ({type(exc).__name__})",
                     hint="See the model server log; check SD_MODEL and free memory.")


def preset_not_here(preset: str, why: str, others: list[str], code: ErrorCode) -> ErrorInfo:
    """Why a preset cannot run here and what to use instead: refused at submit, or failed on first use."""
    needs_lcm = preset in PRESETS and PRESETS[preset].lcm_lora and "one-step" not in why
    remedy = "; or set SD_LCM_LORA on the model server to the LCM-LoRA's hub id or a local copy" if needs_lcm else ""
    return ErrorInfo(code=code, message=f"preset {preset!r} is not available on this server: {why}",
                     hint=f"Use one of: {', '.join(others)}{remedy}.")


def unknown_name(what: str, name: str, known: list[str], listing: str, field: str = "") -> Rejection:
    """A model or LoRA the request names that this server does not have, with the ones it has."""
    shown = ", ".join(known[:20]) + (f" and {len(known) - 20} more" if len(known) > 20 else "")
    return Rejection(ErrorInfo(
        code=ErrorCode.INVALID_PARAMS, message=f"unknown {what} {name[:200]!r}", field=field,
        hint=f"Use one of: {shown} ({listing})." if known else f"This server has no {what}s configured ({listing})."))


# --- deadlines -------------------------------------------------------------------------------


def deadline_unmeetable(deadline: float, ahead: float, own: float, suggestion: str) -> Rejection:
    return Rejection(ErrorInfo(
        code=ErrorCode.DEADLINE, field="deadline_seconds",
        message=f"the job would be done in about {ahead + own:.0f} s, after its deadline of {deadline:g} s: "
                f"{ahead:.0f} s for the jobs ahead of it, {own:.0f} s for its own at this host's measured speed",
        hint=suggestion))


def deadline_passed(deadline: float) -> ErrorInfo:
    return ErrorInfo(code=ErrorCode.DEADLINE, field="deadline_seconds",
                     message=f"its deadline of {deadline:g} s passed while it waited in the queue",
                     hint="Allow more time, or submit when the queue is shorter; GET /v1/capabilities shows this "
                          "host's measured speeds.")
