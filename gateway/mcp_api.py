"""``/mcp``: the service as an MCP server (streamable HTTP), for agents and MCP clients (Claude
Desktop, Open WebUI, any SDK client).

The official ``mcp`` SDK serves the protocol, every revision it speaks (the initialize handshake and
the stateless 2026 envelope): its ASGI app runs on one event loop thread per gateway process and is
called from this WSGI route through ``a2wsgi``. Stateless, so any worker or replica answers any
request, as for the rest of the API; replies stream (SSE) so a waiting tool can send progress.
The route sits behind the gateway's own guards (API keys, the body limit, rate limits: a tool call
that starts work spends the ``generate`` budget, anything else the ``read`` one); the caller's
identity reaches the tools in a header this route writes (whatever the client sent under that name
is replaced), marked with a secret of this process. Browsers' cross-site requests are refused
unless their origin is in CORS_ORIGINS, as the MCP specification asks of servers (DNS rebinding).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import json
import secrets
import threading
import urllib.parse
from typing import Annotated, Literal

from a2wsgi import ASGIMiddleware
from flask import Blueprint, Response, g, request
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from pydantic import Field

from gateway.auth import client_id, owner
from gateway.errors import ApiError
from gateway.mcp_tools import CONNECTIONS, Caller, Tools, tool_error
from gateway.policy import takes_images
from gateway.services import Services, services
from protocol.messages import IMAGE_FORMATS, MAX_IMAGES, MAX_SEED, SCHEDULERS
from protocol.presets import PRESET_NAMES

bp = Blueprint("mcp", __name__)
_CALLER = "x-sdcpu-mcp-caller"
WORK_TOOLS = frozenset({"generate_image", "edit_image", "upscale_image"})  # these spend the generate budget

Prompt = Annotated[str, Field(description="What to draw. A1111's (word:1.2) emphasis and <lora:NAME:WEIGHT> tags "
                                          "work.")]
Negative = Annotated[str | None, Field(description="What to keep out of the image.")]
Side = Annotated[int | None, Field(description="Pixels, a multiple of 8 (default: the model's own size).")]
Steps = Annotated[int | None, Field(description="Denoising steps (default: the preset's).")]
Seed = Annotated[int | None, Field(ge=0, le=MAX_SEED, description="Same seed and settings, same image.")]
Preset = Annotated[Literal[PRESET_NAMES] | None, Field(
    description="quality (default), balanced, fast (a few steps, LCM) or turbo (one-step models).")]
Model = Annotated[str | None, Field(description="A model from list_models (default: the server's).")]
Count = Annotated[int | None, Field(ge=1, le=MAX_IMAGES, description="How many images (different seeds).")]
Guidance = Annotated[float | None, Field(description="How closely to follow the prompt (default: the preset's).")]
Sampler = Annotated[Literal[SCHEDULERS] | None, Field(description="The sampler (default: the preset's).")]
Format = Annotated[Literal[IMAGE_FORMATS] | None, Field(description="png (default), jpeg or webp.")]
Wait = Annotated[bool, Field(description="true: wait and return the images (progress is reported); false: return "
                                         "the job's id at once, then poll get_job (for clients with short timeouts).")]
ImageArg = Annotated[str, Field(description="The image, base64 (a data: URL too): PNG, JPEG or WebP.")]


def build_server(tools: Tools, token: str) -> MCPServer:
    """The MCP server and its tools (``gateway/mcp_tools.py`` does the work)."""
    server = MCPServer("sd-cpu", instructions=(
        "Stable Diffusion on CPU. generate_image makes images from a prompt (the fast preset takes seconds, "
        "quality about a minute at 512x512 on a laptop); edit_image repaints an image (with a mask: only its white "
        "part); upscale_image enlarges one; list_models names the models, LoRAs and upscalers; get_job and "
        "cancel_job follow a job started with wait=false."))

    def caller(ctx: Context) -> Caller:
        raw = (ctx.headers or {}).get(_CALLER, "")
        mark, _, body = raw.partition(" ")
        if not secrets.compare_digest(mark, token):  # cannot happen through the route; refuse rather than guess
            raise tool_error(ApiError(401, "unauthorized", "no caller identity", "Call through /mcp."))
        return Caller(**json.loads(body))

    @server.tool(structured_output=False, description="Make images from a text prompt; returns the images (or "
                 "links when large) and their seeds.")
    async def generate_image(prompt: Prompt, ctx: Context, negative_prompt: Negative = None, width: Side = None,
                             height: Side = None, steps: Steps = None, seed: Seed = None, preset: Preset = None,
                             model: Model = None, n: Count = None, guidance_scale: Guidance = None,
                             sampler: Sampler = None, format: Format = None, wait: Wait = True):
        fields = dict(prompt=prompt, negative_prompt=negative_prompt, width=width, height=height, steps=steps,
                      seed=seed, preset=preset, model=model, n=n, guidance_scale=guidance_scale, scheduler=sampler,
                      format=format)
        return await tools.run(caller(ctx), tools.validated(fields), wait, ctx)

    @server.tool(structured_output=False, description="Repaint an image guided by a prompt (image-to-image); with a "
                 "mask, only the mask's white part is repainted (inpainting).")
    async def edit_image(prompt: Prompt, image: ImageArg, ctx: Context,
                         mask: Annotated[str | None, Field(description="Optional mask, base64: white is repainted, "
                                                                       "black kept.")] = None,
                         strength: Annotated[float | None, Field(ge=0, le=1, description=(
                             "How much changes: 0 keeps the image, 1 ignores it (default 0.75)."))] = None,
                         negative_prompt: Negative = None, steps: Steps = None, seed: Seed = None,
                         preset: Preset = None, model: Model = None, n: Count = None, format: Format = None,
                         wait: Wait = True):
        files = {"init_image": tools.upload(image, "image")}
        if mask:
            files["mask"] = tools.upload(mask, "mask")
        fields = dict(prompt=prompt, strength=strength, negative_prompt=negative_prompt, steps=steps, seed=seed,
                      preset=preset, model=model, n=n, format=format)
        return await tools.run(caller(ctx), tools.validated(fields, files), wait, ctx)

    @server.tool(structured_output=False, description="Enlarge an image by a factor with an upscaler from "
                 "list_models (default Lanczos; ESRGAN-family models when installed).")
    async def upscale_image(image: ImageArg, ctx: Context,
                            scale: Annotated[float, Field(ge=1, le=8, description="The factor, 1-8.")] = 2.0,
                            upscaler: Annotated[str | None, Field(description="An upscaler's name.")] = None,
                            wait: Wait = True):
        return await tools.run(caller(ctx), tools.upscale(tools.upload(image, "image"), upscaler, scale), wait, ctx)

    @server.tool(structured_output=False, description="The models, LoRAs, upscalers and presets this server offers.")
    async def list_models(ctx: Context):
        caller(ctx)
        return await tools.models()

    @server.tool(structured_output=False, description="A job's state and progress; its images once it succeeded.")
    async def get_job(job_id: Annotated[str, Field(description="The id a tool returned.")], ctx: Context):
        return await tools.job(caller(ctx), job_id)

    @server.tool(structured_output=False, description="Cancel a queued or running job.")
    async def cancel_job(job_id: Annotated[str, Field(description="The id a tool returned.")], ctx: Context):
        return await tools.cancel(caller(ctx), job_id)

    return server


class Bridge:
    """The SDK's app on an event loop thread of this process, callable as a WSGI app."""

    def __init__(self, sv: Services):
        self.token = secrets.token_hex(16)
        server = build_server(Tools(sv), self.token)
        # Host and Origin are checked by the route (behind proxies the SDK cannot know the public host).
        app = server.streamable_http_app(streamable_http_path="/mcp", stateless_http=True, json_response=False,
                                         transport_security=TransportSecuritySettings(
                                             enable_dns_rebinding_protection=False))
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, name="mcp", daemon=True).start()
        started: concurrent.futures.Future = concurrent.futures.Future()
        asyncio.run_coroutine_threadsafe(self._run(server, started), self.loop)
        started.result(timeout=30)
        self.wsgi = ASGIMiddleware(app, loop=self.loop)

    @staticmethod
    async def _run(server: MCPServer, started: concurrent.futures.Future) -> None:
        async with server.session_manager.run():  # what the app's lifespan would do under an ASGI server
            started.set_result(None)
            await asyncio.Event().wait()


_bridge: Bridge | None = None
_bridge_lock = threading.Lock()


def bridge(sv: Services) -> Bridge:
    """This process's bridge, made on first use (after gunicorn forked the worker)."""
    global _bridge
    with _bridge_lock:
        if _bridge is None:
            _bridge = Bridge(sv)
        return _bridge


def _message() -> dict:
    try:
        message = json.loads(request.get_data(cache=True) or b"null")
    except ValueError:
        return {}
    return message if isinstance(message, dict) else {}


def starts_work() -> bool:
    """Whether this request is a tool call that starts a job (it then spends the generate budget)."""
    message = _message()
    params = message.get("params")
    return message.get("method") == "tools/call" and isinstance(params, dict) and params.get("name") in WORK_TOOLS


def _same_site(origin: str) -> bool:
    allowed = services().settings.cors_origins
    return origin in allowed or urllib.parse.urlsplit(origin).netloc == request.host


@bp.post("/mcp")  # stateless: no server-initiated stream (GET) and no session to end (DELETE), so 405 for both
@takes_images
def mcp():
    if request.mimetype != "application/json":
        raise ApiError(415, "unsupported_media_type", "MCP messages are JSON-RPC in a JSON body",
                       "Send Content-Type: application/json (an MCP client does).")
    origin = request.headers.get("Origin")
    if origin and not _same_site(origin):
        raise ApiError(403, "forbidden_origin", f"requests from {origin[:100]} are not allowed",
                       "Add the page's origin to CORS_ORIGINS, or call /mcp from an MCP client.")
    sv = services()
    b = bridge(sv)
    body = request.get_data(cache=True)
    environ = dict(request.environ)
    environ["wsgi.input"], environ["CONTENT_LENGTH"] = io.BytesIO(body), str(len(body))
    public = sv.settings.public_url or request.host_url
    connection = CONNECTIONS.opened(request.environ)
    who = {"client_id": client_id(), "owner": owner(), "request_id": g.get("request_id", ""),
           "base_url": public.rstrip("/"), "connection": connection}
    environ["HTTP_" + _CALLER.upper().replace("-", "_")] = f"{b.token} {json.dumps(who)}"
    response = Response.from_app(b.wsgi, environ)
    response.call_on_close(lambda: CONNECTIONS.closed(connection))
    return response


mcp.work_when = starts_work
