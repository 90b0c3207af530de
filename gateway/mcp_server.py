"""The MCP server itself (the official SDK's ``MCPServer``) and the bridge that runs it inside a gateway process;
imported on the first ``/mcp`` request only (``gateway/mcp_api.py``), so a gateway that never serves MCP never
loads the SDK (about 36 MiB and a third of a second per process)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import secrets
import threading
from typing import Annotated, Literal

from a2wsgi import ASGIMiddleware
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from pydantic import Field

from gateway.errors import ApiError
from gateway.mcp_tools import Caller, Tools, tool_error
from gateway.services import Services
from protocol.messages import IMAGE_FORMATS, MAX_IMAGES, MAX_SEED, SCHEDULERS
from protocol.presets import PRESET_NAMES

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


def build_server(tools: Tools, token: str, caller_header: str) -> MCPServer:
    """The MCP server and its tools (``gateway/mcp_tools.py`` does the work); ``caller_header`` carries the
    caller's identity as the route wrote it, marked with ``token``."""
    server = MCPServer("sd-cpu", instructions=(
        "Stable Diffusion on CPU. generate_image makes images from a prompt (the fast preset takes seconds, "
        "quality about a minute at 512x512 on a laptop); edit_image repaints an image (with a mask: only its white "
        "part); upscale_image enlarges one; list_models names the models, LoRAs and upscalers; get_job and "
        "cancel_job follow a job started with wait=false."))

    def caller(ctx: Context) -> Caller:
        raw = (ctx.headers or {}).get(caller_header, "")
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

    def __init__(self, sv: Services, caller_header: str):
        self.token = secrets.token_hex(16)
        server = build_server(Tools(sv), self.token, caller_header)
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
