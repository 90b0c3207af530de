"""What an MCP client may do: the tools of ``/mcp`` (``gateway/mcp_api.py`` serves them).

Each tool is the HTTP API's own path under the caller's identity: a request is validated by the
same ``ParamValidator`` (one contract, the deployment's bounds), submitted as the caller's job, and
every job a tool names is looked up as the caller (another key's job is "not found", as over HTTP).
The model client blocks, so every call to it runs in a worker thread, never on the event loop
that serves every MCP request of this process. A tool that waits reports progress once the job's
step changes (MCP ``notifications/progress``), and a call the client cancels or abandons cancels
its job. Images small enough to travel inline come back as image content; larger ones as a link.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import secrets
import threading

import anyio
import msgspec
from mcp.server.mcpserver import Context, Image
from mcp.server.mcpserver.exceptions import ToolError

from gateway.catalog_api import lora_item, model_item
from gateway.errors import ApiError, as_api_error
from gateway.jobs_api import checked_job_id
from gateway.model_client import ModelServerUnavailable, RemoteError
from gateway.params import Generation
from gateway.resources import job_resource, steps_done
from gateway.services import Services
from gateway.waiting import client_disconnected
from protocol.messages import JobView
from protocol.presets import PRESET_NAMES

log = logging.getLogger(__name__)
# The SDK's client buffers at most 1 MiB per streamed event by default: an image whose base64 would
# pass this goes as a link instead (the rest of the event fits beside it).
INLINE_IMAGE_BYTES = 640 * 1024
POLL_SECONDS = 0.25  # how often a waiting tool looks at its job (progress is sent when the step changes)


@dataclasses.dataclass(frozen=True)
class Caller:
    """Who is calling, as the gateway's auth named them (never from the MCP message itself)."""

    client_id: str  # whose jobs it submits
    owner: str  # whose jobs it may see and cancel ("" for an admin key: everyone's)
    request_id: str
    base_url: str  # for links to images too large to send inline
    connection: str = ""  # this HTTP request's key in ``CONNECTIONS``


class Connections:
    """The HTTP requests /mcp is answering in this process, so a waiting tool notices its client has gone
    (closing the stream is how an MCP client abandons a call; a stateless server hears nothing else)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._open: dict[str, dict] = {}

    def opened(self, environ: dict) -> str:
        key = secrets.token_hex(8)
        with self._lock:
            self._open[key] = environ
        return key

    def closed(self, key: str) -> None:
        with self._lock:
            self._open.pop(key, None)

    def gone(self, key: str) -> bool:
        with self._lock:
            environ = self._open.get(key)
        return environ is not None and client_disconnected(environ)


CONNECTIONS = Connections()


def tool_error(exc: Exception) -> ToolError:
    """An ApiError (or the model server's) as the message a model reads: what, and what to do."""
    err = as_api_error(exc)
    field = f" (field {err.field})" if err.field else ""
    retry = f" Retry in {err.retry_after:g} s." if err.retry_after else ""
    return ToolError(f"{err.message}{field} [{err.code}]. {err.hint}{retry}".strip())


class Tools:
    """The tools, over one gateway process's services."""

    def __init__(self, sv: Services):
        self.sv = sv

    async def _call(self, fn, *args, **kwargs):
        try:
            return await anyio.to_thread.run_sync(lambda: fn(*args, **kwargs))
        except (ApiError, RemoteError, ModelServerUnavailable) as exc:
            raise tool_error(exc) from None

    def validated(self, fields: dict, files: dict[str, bytes] | None = None) -> Generation:
        """A generation's fields (None: left out) checked as an HTTP request's are."""
        try:
            return self.sv.validator.parse_object({k: v for k, v in fields.items() if v is not None}, files=files)
        except ApiError as exc:
            raise tool_error(exc) from None

    def upscale(self, image: bytes, upscaler: str | None, scale: float) -> Generation:
        try:
            return self.sv.validator.upscale(image, upscaler, scale)
        except ApiError as exc:
            raise tool_error(exc) from None

    def upload(self, text: str, field: str) -> bytes:
        """An image argument: base64 or a data: URL (what an MCP client can put in a call), its size checked."""
        try:
            return self.sv.validator.decoded_upload(text, field)
        except ApiError as exc:
            raise tool_error(exc) from None

    async def submit(self, caller: Caller, generation: Generation) -> JobView:
        return await self._call(self.sv.client.submit, generation.params, client_id=caller.client_id,
                                request_id=caller.request_id, **generation.uploads())

    async def run(self, caller: Caller, generation: Generation, wait: bool, ctx: Context | None) -> list:
        """Submit; then either the job's id at once, or wait for it with progress and return its images."""
        job = await self.submit(caller, generation)
        if not wait:
            return [_text({"job_id": job.job_id, "state": job.state.value,
                           "hint": "Call get_job with this id until its state is succeeded; it returns the images."})]
        try:
            done = await self._wait(caller, job.job_id, ctx)
        except BaseException:
            with anyio.CancelScope(shield=True):  # the client cancelled the call or went away: so does the job
                try:
                    await anyio.to_thread.run_sync(lambda: self.sv.client.cancel(job.job_id,
                                                                                 client_id=caller.client_id))
                except Exception as exc:  # noqa: BLE001  (already ended, or its server is gone: nothing to stop)
                    log.info("job %s: cancel after the MCP call ended: %s", job.job_id, exc)
            raise
        return await self.outcome(caller, done)

    async def _wait(self, caller: Caller, job_id: str, ctx: Context | None) -> JobView:
        last = None
        deadline = anyio.current_time() + self.sv.settings.sync_timeout
        while True:
            view = await self._call(self.sv.client.get_job, job_id, caller.owner)
            if view.state.terminal:
                return view
            if CONNECTIONS.gone(caller.connection):
                log.info("job %s: the MCP client went away", job_id)
                raise anyio.get_cancelled_exc_class()()
            progress = view.progress
            if ctx is not None and progress is not None:
                # MCP progress only ever grows: steps counted over the job's images, not per image.
                images = max(1, view.params.n)
                done, total = steps_done(view)
                mark = (done, progress.detail)
                if last is None or mark != last and done >= last[0]:
                    last = mark
                    eta = f", about {progress.eta_seconds:.0f} s left" if progress.eta_seconds else ""
                    image = f" (image {progress.image_index + 1} of {images})" if images > 1 else ""
                    text = progress.detail or (f"step {progress.step} of {progress.total_steps}{image}{eta}"
                                               if view.state.value == "running" else
                                               f"queued at {view.queue_position or 1}{eta}")
                    await ctx.report_progress(done, total, text)
            if anyio.current_time() > deadline:
                raise ToolError(f"the job was not done within {self.sv.settings.sync_timeout:g} s and was cancelled. "
                                "Call again with wait=false and poll get_job for long work.")
            await anyio.sleep(POLL_SECONDS)

    async def outcome(self, caller: Caller, view: JobView) -> list:
        """A finished job as content: its images (inline or linked) and a JSON summary; an error otherwise."""
        if view.state.value != "succeeded":
            if view.error is not None:
                raise ToolError(f"the job {view.state.value}: {view.error.message} [{view.error.code.value}]. "
                                f"{view.error.hint}".strip())
            raise ToolError(f"the job {view.state.value}")
        content: list = []
        links = []
        for info in view.images:
            _, data = await self._call(self.sv.client.fetch, view.job_id, info.index, caller.owner)
            url = f"{caller.base_url}/v1/jobs/{view.job_id}/image?index={info.index}"
            if len(data) * 4 // 3 <= INLINE_IMAGE_BYTES:
                content.append(Image(data=data, format=info.media_type.split("/")[1]))
            else:
                links.append(url)
        summary = {"job_id": view.job_id, "state": view.state.value,
                   "seeds": [info.seed for info in view.images],
                   "size": f"{view.params.width}x{view.params.height}", "model": view.model, "engine": view.engine}
        if links:
            summary["image_urls"] = links
            summary["note"] = ("Images larger than an MCP message are linked: fetch them with this server's API key "
                               "(Authorization: Bearer <key>) before the job's results expire.")
        return content + [_text(summary)]

    async def job(self, caller: Caller, job_id: str) -> list:
        view = await self._call(self.sv.client.get_job, _checked_id(job_id), caller.owner)
        if view.state.value == "succeeded":
            return await self.outcome(caller, view)
        return [_text(msgspec.to_builtins(job_resource(view)))]

    async def cancel(self, caller: Caller, job_id: str) -> list:
        view = await self._call(self.sv.client.cancel, _checked_id(job_id), client_id=caller.owner)
        return [_text({"job_id": view.job_id, "state": view.state.value, "cancel_requested": view.cancel_requested})]

    async def models(self) -> list:
        listing = await self._call(self.sv.model_list, fresh=True)
        return [_text({"models": [model_item(m) for m in listing.models],
                       "loras": [lora_item(lora) for lora in listing.loras],
                       "upscalers": [u.name for u in listing.upscalers],
                       "presets": list(PRESET_NAMES)})]


def _checked_id(job_id: str) -> str:
    try:
        return checked_job_id(job_id)
    except ApiError as exc:
        raise tool_error(exc) from None


def _text(obj) -> str:
    return json.dumps(obj, indent=1)
