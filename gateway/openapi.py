"""``/openapi.json`` built from the types the code validates with, and a ``/docs`` page.

Request bodies come from the same msgspec type that decodes them (limits included), responses
from the HTTP resource types, so the document cannot drift from the behaviour.
"""

from __future__ import annotations

from pathlib import Path

import flask_swagger_ui
import msgspec
from flask import Blueprint, current_app, jsonify, send_from_directory

from gateway.a1111_api import Img2ImgRequest, Txt2ImgRequest
from gateway.a1111_extras import BatchImagesRequest, SingleImageRequest
from gateway.controlnet_api import DetectRequest
from gateway.errors import ApiError
from gateway.openai_api import ImagesRequest
from gateway.policy import public
from gateway.resources import ErrorBody, JobResource
from gateway.services import services
from gateway.upscale_api import UpscaleRequest
from protocol.messages import MAX_LISTED_JOBS

bp = Blueprint("openapi", __name__)
_REF = "#/components/schemas/{name}"


def _ref(name: str) -> dict:
    return {"$ref": _REF.format(name=name)}


def _json_content(name: str) -> dict:
    return {"application/json": {"schema": _ref(name)}}


def _errors(*statuses: int) -> dict:
    descriptions = {400: "Invalid input", 404: "Unknown job", 409: "Job not in the needed state",
                    410: "Job expired", 413: "Body too large",
                    422: "The deadline (deadline_seconds) cannot be met, or the job's predicted peak memory is over "
                         "the server's budget (over_memory_budget): the prediction and what would fit",
                    429: "Rate limited, or the queue is full (see Retry-After)",
                    500: "Generation failed", 503: "Model server unavailable or loading (see Retry-After)",
                    504: "Timed out waiting for the image"}
    return {str(s): {"description": descriptions[s], "content": _json_content("ErrorBody")} for s in statuses}


_IMAGE = {"image/png": {"schema": {"type": "string", "format": "binary"}},
          "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
          "image/webp": {"schema": {"type": "string", "format": "binary"}}}
_JOB_ID = [{"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}]
_ANY_JSON = {"application/json": {"schema": {"type": "object"}}}
_ANY_JSON_ARRAY = {"application/json": {"schema": {"type": "array", "items": {"type": "object"}}}}
# Each server-sent event as a client parses it (what schemathesis checks every streamed event against).
_EVENT_STREAM = {"text/event-stream": {"schema": {"type": "object", "properties": {
    "event": {"type": "string"}, "data": {"type": "string"}, "id": {"type": "string"}, "retry": {"type": "integer"}}}}}
_NULL_JSON = {"application/json": {"schema": {"type": "null"}}}  # A1111 answers some POSTs with null


# Swagger UI's distribution as the package ships it; only these files are served.
_SWAGGER_DIST = Path(flask_swagger_ui.__file__).parent / "dist"
_SWAGGER_FILES = frozenset({"swagger-ui.css", "swagger-ui-bundle.js", "favicon-32x32.png", "favicon-16x16.png"})


def _compat_paths() -> dict:
    def get(summary: str, content: dict = _ANY_JSON) -> dict:
        return {"get": {"summary": summary, "responses": {
            "200": {"description": "OK", "content": content},
            "429": {"description": "Rate limited (see Retry-After)", "content": _ANY_JSON}}}}

    def post(summary: str, schema: str | None = None, errors=(422, 429, 503), content: dict = _ANY_JSON) -> dict:
        op = {"summary": summary, "responses": {
            "200": {"description": "OK", "content": content},
            **{str(s): {"description": "Error", "content": _ANY_JSON} for s in errors}}}
        if schema:
            op["requestBody"] = {"required": True, "content": _json_content(schema)}
        return {"post": op}

    a1111 = "/sdapi/v1"
    return {
        "/v1/images/generations": post("OpenAI Images API: generate (b64_json or url; with stream: true, OpenAI's "
                                       "events: up to partial_images image_generation.partial_image, then "
                                       "image_generation.completed per image)", "ImagesRequest",
                                       (400, 429, 500, 503), content={**_ANY_JSON, **_EVENT_STREAM}),
        "/v1/images/edits": {"post": {
            "summary": "OpenAI Images API: edit an image (multipart); transparent parts of the mask, else of the "
                       "image, are repainted",
            "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
                "type": "object", "required": ["image", "prompt"],
                "properties": {"image": {"type": "string", "format": "binary"},
                               "mask": {"type": "string", "format": "binary"},
                               "prompt": {"type": "string", "minLength": 1}, "n": {"type": "integer"},
                               "size": {"type": "string"},
                               "response_format": {"type": "string", "enum": ["b64_json", "url"]},
                               "stream": {"type": "boolean"},
                               "partial_images": {"type": "integer", "minimum": 0, "maximum": 3}}}}}},
            "responses": {"200": {"description": "OK (stream: image_edit.* events)",
                                  "content": {**_ANY_JSON, **_EVENT_STREAM}},
                          **{str(s): {"description": "Error", "content": _ANY_JSON}
                             for s in (400, 413, 429, 500, 503)}}}},
        "/v1/models": get("OpenAI's list shape: every model a request may name (model), the loaded one marked, "
                          "which are one-step models and which presets each can run"),
        "/v1/models/{name}": {"parameters": [{"name": "name", "in": "path", "required": True,
                                              "schema": {"type": "string"}}],
                              "get": {"summary": "One model of the list", "responses": {
                                  "200": {"description": "OK", "content": _ANY_JSON},
                                  **{str(s): {"description": "Error", "content": _ANY_JSON} for s in (404, 429)}}}},
        f"{a1111}/txt2img": post("AUTOMATIC1111 txt2img (blocking; base64 PNGs, info JSON string)",
                                 "Txt2ImgRequest", (404, 422, 429, 500, 503)),
        f"{a1111}/img2img": post("AUTOMATIC1111 img2img and inpainting (init_images, denoising_strength, mask "
                                 "white where to repaint)", "Img2ImgRequest", (404, 413, 422, 429, 500, 503)),
        f"{a1111}/progress": get("AUTOMATIC1111: progress of the running job"),
        f"{a1111}/interrupt": post("AUTOMATIC1111: stop the caller's running job, keep what it made",
                                   errors=(429, 503)),
        f"{a1111}/skip": post("AUTOMATIC1111: end the caller's running job's current image", errors=(429, 503)),
        f"{a1111}/sd-models": get("AUTOMATIC1111: checkpoints (every model a request may name)", _ANY_JSON_ARRAY),
        f"{a1111}/loras": get("AUTOMATIC1111: LoRAs, for <lora:NAME:WEIGHT> in prompts", _ANY_JSON_ARRAY),
        f"{a1111}/refresh-checkpoints": post("AUTOMATIC1111: look for new checkpoints (done by itself here)",
                                             errors=(429,), content=_NULL_JSON),
        f"{a1111}/refresh-loras": post("AUTOMATIC1111: look for new LoRAs (done by itself here)", errors=(429,),
                                       content=_NULL_JSON),
        f"{a1111}/samplers": get("AUTOMATIC1111: samplers", _ANY_JSON_ARRAY),
        f"{a1111}/schedulers": get("AUTOMATIC1111: schedulers", _ANY_JSON_ARRAY),
        f"{a1111}/options": {**get("AUTOMATIC1111: options, A1111's keys with its defaults and this client's "
                                   "writes"),
                             **post("AUTOMATIC1111: set options for this client (not everyone): sd_model_checkpoint, "
                                    "samples_format, jpeg_quality and token merging apply to its later requests; "
                                    "the others are kept and echoed", errors=(422, 429), content=_NULL_JSON)},
        f"{a1111}/scripts": get("AUTOMATIC1111: scripts (none)"),
        f"{a1111}/extra-single-image": post("AUTOMATIC1111 extras: upscale one image (blocking; upscaler_1, "
                                            "upscaling_resize or resize_mode 1 with upscaling_resize_w/h)",
                                            "SingleImageRequest", (413, 422, 429, 500, 503)),
        f"{a1111}/extra-batch-images": post("AUTOMATIC1111 extras: upscale several images (imageList)",
                                            "BatchImagesRequest", (413, 422, 429, 500, 503)),
        f"{a1111}/upscalers": get("AUTOMATIC1111: pixel upscalers (built-ins, then the model files in UPSCALER_DIR)",
                                  _ANY_JSON_ARRAY),
        f"{a1111}/latent-upscale-modes": get("AUTOMATIC1111: the hires fix's latent upscalers", _ANY_JSON_ARRAY),
        f"{a1111}/realesrgan-models": get("AUTOMATIC1111: the upscaler model files (UPSCALER_DIR)", _ANY_JSON_ARRAY),
        f"{a1111}/cmd-flags": get("AUTOMATIC1111: command-line flags as this server would have them (no paths)"),
        f"{a1111}/embeddings": get("AUTOMATIC1111: textual-inversion embeddings (none: {loaded: {}, skipped: {}})"),
        f"{a1111}/png-info": post("AUTOMATIC1111: a PNG's infotext ({\"image\": base64}): info, items, parameters",
                                  None, (413, 422, 429)),
        "/v1/png-info": post("A PNG's infotext and the request fields it gives ({\"image\": base64} or a multipart "
                             "file 'image')", None, (400, 413, 429)),
        "/internal/progress": post("AUTOMATIC1111: the progress of the caller's task given as force_task_id "
                                   "(id_task, id_live_preview, live_preview)", None, (422, 429)),
        "/v1/capabilities": get("What each model server can do on its host, measured there: per model, preset, mode "
                                "and size the seconds per step and per image and the peak memory of the jobs it ran "
                                "(kept per host); what it cannot run and why"),
        "/v1/capabilities/measure": {"post": {
            "summary": "Measure on demand: one job per preset (all the model runs, or presets: [...]) at the model's "
                       "size, or width and height; the caller's jobs (202, their ids)",
            "requestBody": {"required": False, "content": _ANY_JSON},
            "responses": {"202": {"description": "Accepted", "content": _ANY_JSON},
                          **{str(s): {"description": "Error", "content": _ANY_JSON} for s in (400, 429, 503)}}}},
        "/mcp": post("MCP (streamable HTTP, JSON-RPC; stateless, so POST only): tools generate_image, edit_image, "
                     "upscale_image, list_models, get_job, cancel_job; replies stream (text/event-stream) with "
                     "progress notifications. Connect an MCP client to this URL (the SDK's errors: JSON-RPC's shape)",
                     None, (400, 401, 403, 404, 406, 413, 415, 429), content={**_ANY_JSON, **_EVENT_STREAM}),
        f"{a1111}/face-restorers": get("AUTOMATIC1111: the face restorers (FACE_RESTORER_DIR; none without a face "
                                       "detector)", _ANY_JSON_ARRAY),
        "/controlnet/version": get("A1111's ControlNet extension: its API version"),
        "/controlnet/settings": get("A1111's ControlNet extension: control_net_unit_count (units per job)"),
        "/controlnet/model_list": get("A1111's ControlNet extension: the ControlNets (CONTROLNET_DIR)"),
        "/controlnet/module_list": get("A1111's ControlNet extension: the preprocessors and their sliders"),
        "/controlnet/control_types": get("A1111's ControlNet extension: control types with their modules and models"),
        "/controlnet/detect": post("A1111's ControlNet extension: preprocess images (controlnet_module, "
                                   "controlnet_input_images or controlnet_images, controlnet_processor_res, "
                                   "controlnet_threshold_a/b): the maps, base64", None, (413, 422, 429, 500, 503)),
        **{f"{a1111}/{name}": get(f"AUTOMATIC1111: {what} (none here yet: an empty list)", _ANY_JSON_ARRAY)
           for name, what in (("hypernetworks", "hypernetworks"), ("prompt-styles", "prompt styles"))},
    }


def build_spec(request_type: type) -> dict:
    _, components = msgspec.json.schema_components(
        [request_type, JobResource, ErrorBody, ImagesRequest, Txt2ImgRequest, Img2ImgRequest, UpscaleRequest,
         SingleImageRequest, BatchImagesRequest, DetectRequest], ref_template=_REF)
    # The generation routes take JSON (images base64) or a multipart form (images as files).
    body = {"required": True, "content": {**_json_content(request_type.__name__),
                                          "multipart/form-data": {"schema": _ref(request_type.__name__)}}}
    job_ok = {"content": _json_content("JobResource")}
    paths = {
        "/generate": {"post": {
            "summary": "Generate one image and return it (seed-compatible)", "requestBody": body,
            "responses": {"200": {"description": "The image; X-Seed and X-Job-Id headers", "content": _IMAGE},
                          **_errors(400, 409, 413, 422, 429, 500, 503, 504)}}},
        "/v1/jobs": {"post": {
            "summary": "Submit a job; returns at once with its id (Location header)", "requestBody": body,
            "responses": {"202": {"description": "Queued", **job_ok}, **_errors(400, 413, 422, 429, 503)}},
            "get": {"summary": "The caller's jobs: unfinished (running, then queued in order), then its most recently "
                               "finished ones still kept, newest first",
                    "parameters": [{"name": "state", "in": "query",
                                    "schema": {"type": "string", "enum": ["unfinished", "finished"]}},
                                   {"name": "limit", "in": "query", "schema": {
                                       "type": "integer", "minimum": 1, "maximum": MAX_LISTED_JOBS, "default": 24}}],
                    "responses": {"200": {"description": "{\"jobs\": [JobResource, ...]}",
                                          "content": _ANY_JSON}, **_errors(400, 429, 503)}}},
        "/v1/jobs/{job_id}": {
            "parameters": _JOB_ID,
            "get": {"summary": "A job's state, progress, ETA, queue position and error",
                    "responses": {"200": {"description": "The job", **job_ok}, **_errors(404, 410, 429, 503)}},
            "delete": {"summary": "Cancel this job (queued: at once; running: at the next step); a finished "
                                  "job is deleted with its images (X-Deleted: true)",
                       "responses": {"200": {"description": "Cancelled, or deleted", **job_ok},
                                     "202": {"description": "Cancellation requested", **job_ok},
                                     **_errors(404, 410, 429, 503)}}},
        "/v1/jobs/{job_id}/events": {"parameters": _JOB_ID, "get": {
            "summary": "Server-Sent Events: 'progress' events, then 'completed', 'failed' or 'cancelled'",
            "responses": {"200": {"description": "An event stream; each data is a JobResource",
                                  "content": _EVENT_STREAM},
                          **_errors(404, 410, 429, 503)}}},
        "/v1/jobs/{job_id}/image": {"parameters": _JOB_ID + [
            {"name": "index", "in": "query", "schema": {"type": "integer", "minimum": 0, "default": 0}}],
            "get": {"summary": "A finished job's image", "responses": {
                "200": {"description": "The image", "content": _IMAGE}, **_errors(400, 404, 409, 410, 429, 503)}}},
        "/v1/upscale": {"post": {
            "summary": "Start an upscale job (no diffusion): an image by scale, or to width x height, with an upscaler "
                       "from GET /v1/upscalers, its faces restored after if asked; progress counts tiles; poll, "
                       "stream, cancel like any job",
            "requestBody": {"required": True, "content": {**_json_content("UpscaleRequest"),
                                                          "multipart/form-data": {"schema": _ref("UpscaleRequest")}}},
            "responses": {"202": {"description": "Queued", **job_ok}, **_errors(400, 413, 429, 503)}}},
        "/v1/detect": {"post": {
            "summary": "Start a detect job: one ControlNet preprocessor (module) on an image, no model: the control "
                       "map a unit would make; poll or stream it like any job",
            "requestBody": {"required": True, "content": _json_content("DetectRequest")},
            "responses": {"202": {"description": "Queued", **job_ok}, **_errors(400, 413, 429, 503)}}},
        "/v1/controlnets": {"get": {
            "summary": "ControlNets a control unit may name (CONTROLNET_DIR, each with its model family) and the "
                       "preprocessors (modules) with their settings, each saying whether this server can run it (those "
                       "needing an annotator model: when it is in ANNOTATOR_DIR)",
            "responses": {"200": {"description": "The lists", "content": _ANY_JSON}, **_errors(503)}}},
        "/v1/upscalers": {"get": {
            "summary": "Upscalers: built-in resamplers, the hires fix's latent ones, and model files (UPSCALER_DIR)",
            "responses": {"200": {"description": "The list", "content": _ANY_JSON}, **_errors(503)}}},
        "/v1/face-restorers": {"get": {
            "summary": "Face restoration models (FACE_RESTORER_DIR) and the face detector they need",
            "responses": {"200": {"description": "The list", "content": _ANY_JSON}, **_errors(503)}}},
        "/v1/loras": {"get": {
            "summary": "The LoRAs a request may apply (loras, or <lora:NAME:WEIGHT> in the prompt)",
            "responses": {"200": {"description": "The list", "content": _ANY_JSON}, **_errors(503)}}},
        "/v1/presets": {"get": {
            "summary": "Speed/quality presets: their steps, guidance and sampler, and which this server can run",
            "responses": {"200": {"description": "The default preset and the list", "content": _ANY_JSON}}}},
        **_compat_paths(),
        "/v1/jobs/{job_id}/preview": {"parameters": _JOB_ID, "get": {
            "summary": "The latest low-res preview of a running job that asked for one (preview: true)",
            "responses": {"200": {"description": "A small JPEG", "content": {"image/jpeg": {}}},
                          **_errors(404, 429, 503)}}},
        "/health": {"get": {"summary": "Service health: model, device, optimizations, queue, memory, the load's "
                                   "phase and progress, and each model server",
                            "responses": {"200": {"description": "Healthy or loading", "content": _ANY_JSON},
                                          "503": {"description": "Model server down or failed", "content": _ANY_JSON}}}},
        "/health/live": {"get": {"summary": "Liveness of the gateway process",
                                 "responses": {"200": {"description": "Alive", "content": _ANY_JSON}}}},
        "/health/ready": {"get": {"summary": "Readiness: a model server has its model loaded and answers",
                                  "responses": {"200": {"description": "Ready", "content": _ANY_JSON},
                                                **_errors(503)}}},
        "/metrics": {"get": {"summary": "Prometheus metrics: requests, queue, jobs by outcome, s/step, memory",
                             "responses": {"200": {"description": "Prometheus text format",
                                                   "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
        "/openapi.json": {"get": {"summary": "This document",
                                  "responses": {"200": {"description": "OpenAPI 3.1", "content": _ANY_JSON}}}},
        "/docs": {"get": {"summary": "This document, browsable (Swagger UI, served offline)",
                          "responses": {"200": {"description": "HTML", "content": {"text/html": {}}}}}},
        "/docs/assets/{name}": {"parameters": [{"name": "name", "in": "path", "required": True,
                                                "schema": {"type": "string"}}],
                                "get": {"summary": "Swagger UI's files", "responses": {
                                    "200": {"description": "CSS, JavaScript or an icon", "content": {"*/*": {}}},
                                    **_errors(404)}}},
        "/": {"get": {"summary": "The web page", "responses": {"200": {"description": "HTML",
                                                                        "content": {"text/html": {}}}}}},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "sd-cpu: Stable Diffusion on the CPU", "version": "1.0.0",
                 "description": "Text-to-image over HTTP, built for CPU-only machines. Errors are "
                                "JSON objects with error, code and hint."},
        "paths": paths,
        "components": {"schemas": components},
    }


@bp.get("/openapi.json")
@public
def openapi_json():
    spec = current_app.extensions.get("openapi")
    if spec is None:
        spec = current_app.extensions["openapi"] = build_spec(services().validator.request_type)
    return jsonify(spec)


@bp.get("/docs")
@public
def docs():
    """Swagger UI (the flask-swagger-ui package's files, served here: offline) over /openapi.json."""
    return current_app.send_static_file("docs.html")


@bp.get("/docs/assets/<name>")
@public
def docs_assets(name: str):
    """Swagger UI's own files, from the package; the page's start-up script is ours."""
    if name == "docs.js":
        return current_app.send_static_file("docs.js")
    if name not in _SWAGGER_FILES:
        raise ApiError(404, "not_found", f"no file {name[:80]!r}", "GET /docs.")
    return send_from_directory(_SWAGGER_DIST, name, max_age=86400)
