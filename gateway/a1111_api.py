"""The AUTOMATIC1111 API subset under ``/sdapi/v1`` (webuiapi, SillyTavern, bots, scripts).

txt2img blocks like A1111's and returns base64 PNGs with ``info`` as a JSON *string* carrying the
real seeds. A1111 has one global job; here ``progress``, ``interrupt`` and ``skip`` concern the
caller's own job only (an admin key: any), and the waiting txt2img still answers 200 with what
was made. Validation errors are FastAPI-style
422 ``{"detail": [...]}``; other errors A1111's ``{"error", "detail", "body", "errors"}``.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import PurePath
from typing import Annotated

import msgspec
from flask import Blueprint, jsonify, request
from msgspec import Meta

from gateway.a1111_controlnet import units as controlnet_units
from gateway.a1111_faces import face_fields
from gateway.a1111_names import SAMPLERS, SCHEDULERS, resolve_sampler
from gateway.a1111_options import DEFAULTS, checked, generation_fields
from gateway.auth import owner
from gateway.errors import ApiError
from gateway.json_body import convert, decode_object
from gateway.model_client import RemoteError
from gateway.policy import starts_work, takes_images
from gateway.resources import steps_done
from gateway.services import services
from gateway.waiting import generate_sync
from protocol.contract import field_of
from protocol.infotext import A1111_SAMPLER_NAMES, infotext
from protocol.messages import JobState, JobView, ModelEntry, StopMode
from protocol.upscalers import DEFAULT_HIRES_UPSCALER

bp = Blueprint("a1111", __name__, url_prefix="/sdapi/v1")


class Txt2ImgRequest(msgspec.Struct, kw_only=True):
    """The fields we use or answer for; A1111's other ~40 fields are accepted and ignored. Types are
    coerced as A1111's pydantic models coerce them (``_decode``): "3" or 3.0 for 3, 1/0 or "true"
    for a boolean, a boolean for an integer."""

    prompt: str = ""
    negative_prompt: str | None = None
    seed: int | None = -1  # -1: random, as A1111
    sampler_name: str | None = None
    sampler_index: str | None = None
    scheduler: str | None = None
    batch_size: int | None = 1
    n_iter: int | None = 1
    steps: int | None = None
    cfg_scale: float | None = None
    width: int | None = None
    height: int | None = None
    override_settings: dict | None = None  # sd_model_checkpoint and token_merging_ratio are used
    tiling: bool | None = False
    restore_faces: bool | None = None  # None: the client's option face_restoration (A1111's rule)
    enable_hr: bool | None = False  # the hires fix, with the hr_* fields below
    # txt2img: the hires fix's strength (meaningless without enable_hr, as in A1111; webuiapi always
    # sends 0.7); img2img: how much is repainted.
    denoising_strength: Annotated[float, Meta(ge=0.0, le=1.0)] | None = None
    hr_scale: float | None = None
    hr_upscaler: str | None = None
    hr_second_pass_steps: int | None = None
    hr_resize_x: int | None = None
    hr_resize_y: int | None = None
    hr_prompt: str | None = None
    hr_negative_prompt: str | None = None
    script_name: str | None = None
    force_task_id: str | None = None  # the task id POST /internal/progress follows (a1111_tasks)
    alwayson_scripts: dict | None = None  # ControlNet's units are used (a1111_controlnet); other scripts ignored


class Img2ImgRequest(Txt2ImgRequest, kw_only=True):
    """txt2img's fields plus the image ones we use. The mask is white where to repaint (black with
    inpainting_mask_invert); the kept parts are the original pixels ("original" fill, whole picture);
    resize_mode as A1111 numbers them (``RESIZE_MODES``)."""

    init_images: list[str] | None = None
    mask: str | None = None
    mask_blur: int | None = None
    inpainting_mask_invert: int | None = 0
    resize_mode: Annotated[int, Meta(ge=0, le=3)] | None = 0


# A1111's resize modes: just resize, crop and resize, resize and fill, just resize (latent upscale).
RESIZE_MODES = ("stretch", "crop", "fill", "stretch")


# A1111's own scripts: a request naming one runs without it, and says so in info (any other name is
# A1111's 422 "Script not found").
_BUILTIN_SCRIPTS = {"prompt matrix", "prompts from file or textbox", "x/y/z plot", "sd upscale", "loopback",
                    "outpainting mk2", "poor man's outpainting"}
# A1111's hires-fix strength when a request leaves denoising_strength out.
_HIRES_STRENGTH = 0.7


def render_error(err: ApiError):
    if err.status == 400:  # FastAPI's validation error shape
        loc = ["body", err.field] if err.field else ["body"]
        return jsonify(detail=[{"loc": loc, "msg": f"{err.message}. {err.hint}", "type": err.code}]), 422
    body = {"error": err.code, "detail": err.hint, "body": "", "errors": err.message}
    return jsonify(body), err.status, err.headers()



_EXAMPLE = 'Send an A1111 txt2img JSON object such as {"prompt": "a cat", "steps": 20}.'
_IMG2IMG_EXAMPLE = ('Send an A1111 img2img JSON object such as {"prompt": "a cat", "init_images": ["<base64>"], '
                    '"denoising_strength": 0.6}.')


def decode_request(kind: type, example: str):
    """An A1111 request body as ``kind`` with pydantic's coercions, and the body as sent."""
    raw = decode_object(request.get_data(cache=False), example, empty_ok=True)
    try:
        return convert(raw, kind, strict=False, bools_as_ints=True), raw
    except msgspec.ValidationError as exc:
        raise ApiError(400, "invalid_params", f"invalid request body: {exc}", example,
                       field=field_of(str(exc))) from None


def checkpoint_title(m: ModelEntry) -> str:
    """A model as A1111 titles a checkpoint: its name, and its short hash in brackets once known."""
    return f"{m.name} [{m.hash}]" if m.hash else m.name


def _checkpoint(title: str) -> str:
    """The model an A1111 checkpoint title (or name, or file name) means; the title itself when none
    matches (the model server then refuses it, naming the ones it has)."""
    for m in services().model_list().models:
        if title in (m.name, checkpoint_title(m), m.source) or title.split(" [")[0] in (m.name, m.source):
            return m.name
    return title


def _parse():
    r, raw = decode_request(Txt2ImgRequest, _EXAMPLE)
    sampler, fields, notes = _fields(r, img2img=False)
    return r, raw, sampler, services().validator.parse_object(fields), notes


def _parse_img2img():
    r, raw = decode_request(Img2ImgRequest, _IMG2IMG_EXAMPLE)
    sampler, fields, notes = _fields(r, img2img=True)
    if not r.init_images:
        raise ApiError(400, "invalid_params", "init_images is empty", _IMG2IMG_EXAMPLE, field="init_images")
    fields.update(init_image=r.init_images[0], mask=r.mask or None, mask_blur=r.mask_blur if r.mask else None,
                  strength=0.75 if r.denoising_strength is None else r.denoising_strength,
                  resize_mode=RESIZE_MODES[r.resize_mode or 0])
    if r.resize_mode == 3:
        notes["resize_mode"] = "just resize (latent upscale) is done as just resize, in pixels"
    mask_from = "inverted" if r.mask and r.inpainting_mask_invert else "luminance"
    return r, raw, sampler, services().validator.parse_object(fields, mask_from=mask_from), notes


def _fields(r: Txt2ImgRequest, img2img: bool) -> tuple[str | None, dict, dict[str, str]]:
    """Our fields from A1111's, the sampler name to report (None: the one the preset chose), and
    what the request asked for that was not done, with why (``info.not_applied``)."""
    scheduler, sampler = resolve_sampler(r.sampler_name or r.sampler_index, r.scheduler)
    for name, value in (("batch_size", r.batch_size), ("n_iter", r.n_iter)):
        if value is not None and value < 1:
            raise ApiError(400, "invalid_params", f"{name} must be at least 1, not {value}", "Use 1 or more.",
                           field=name)
    if r.seed is not None and r.seed < -1:
        raise ApiError(400, "invalid_params", f"seed must be -1 (random) or 0 or more, not {r.seed}",
                       "Use -1 for a random seed, or a seed from 0.", field="seed")
    notes: dict[str, str] = {}
    if r.script_name:
        if r.script_name.strip().lower() not in _BUILTIN_SCRIPTS:
            raise ApiError(400, "script_not_found", "Script not found",
                           "Leave script_name out: no scripts run here (GET /sdapi/v1/scripts).", field="script_name")
        notes["script_name"] = f"the script {r.script_name!r} does not run on this server; the plain " \
                               f"{'img2img' if img2img else 'txt2img'} was made"
    count = (r.batch_size or 1) * (r.n_iter or 1)
    fields = {"prompt": r.prompt, "negative_prompt": r.negative_prompt, "steps": r.steps, "width": r.width,
              "height": r.height, "guidance_scale": r.cfg_scale, "scheduler": scheduler, "n": count,
              "seed": None if r.seed is None or r.seed < 0 else r.seed, "tiling": r.tiling,
              "task": r.force_task_id}
    chosen = services().client_options.get(owner())
    for key, value in generation_fields(chosen, img2img).items():  # this client's options (POST /options)
        fields.setdefault(key, value)
    if scheduler == "lcm":
        # A1111 users pair the LCM sampler with an LCM LoRA; here that is the fast preset's adapter
        # (their steps and CFG scale still apply; the preset's tiny VAE too).
        fields["preset"] = "fast"
    overrides = r.override_settings or {}
    if overrides.get("token_merging_ratio") is not None:
        fields["token_merging"] = overrides["token_merging_ratio"]
    # The checkpoint: this request's override, else the one this client chose (POST /options), else the default.
    checkpoint = overrides.get("sd_model_checkpoint") or chosen.get("sd_model_checkpoint")
    if checkpoint:
        if not isinstance(checkpoint, str):
            raise ApiError(400, "invalid_params", "sd_model_checkpoint must be a string",
                           "Use a title from GET /sdapi/v1/sd-models.", field="override_settings")
        fields["model"] = _checkpoint(checkpoint)
    if r.enable_hr and not img2img:
        fields["hires"] = _hires(r)
    controls = controlnet_units(r.alwayson_scripts)
    if controls:
        fields["controls"] = controls
    # this request's settings (checked as a POST /options is), else this client's, else A1111's
    options = {**DEFAULTS, **chosen, **checked(overrides)}
    # Step previews for /progress's current_image and /internal/progress's live_preview (a millisecond a step).
    fields["preview"] = options["live_previews_enable"]
    if r.restore_faces if r.restore_faces is not None else options["face_restoration"]:
        fields["face_restoration"], note = face_fields(options["face_restoration_model"])
        if note:
            notes["restore_faces"] = note
    return sampler, fields, notes


def _hires(r: Txt2ImgRequest) -> dict:
    """A1111's hr_* fields as our hires fix (its defaults where they are left out or 0)."""
    strength = _HIRES_STRENGTH if not r.denoising_strength else r.denoising_strength
    return {"scale": r.hr_scale or 2.0, "width": r.hr_resize_x or 0, "height": r.hr_resize_y or 0,
            "upscaler": r.hr_upscaler or DEFAULT_HIRES_UPSCALER, "steps": r.hr_second_pass_steps or 0,
            "strength": strength, "prompt": r.hr_prompt or "", "negative_prompt": r.hr_negative_prompt or ""}


@bp.post("/txt2img")
@starts_work(_parse)
def txt2img(parsed):
    return _generate(parsed)


@bp.post("/img2img")
@starts_work(_parse_img2img)
@takes_images
def img2img(parsed):
    return _generate(parsed)


def _generate(parsed):
    """Both routes' work and answer: A1111's {images, parameters, info (a JSON string)}."""
    sv = services()
    r, raw, sampler, generation, notes = parsed
    params = generation.params
    sampler = sampler or A1111_SAMPLER_NAMES.get(params.scheduler, params.scheduler)  # the preset's choice
    done, images = generate_sync(sv, generation)
    seeds = [info.seed for info, _ in images if info.control_map is None]  # the detected maps come after these
    model = done.model or sv.client.ping(timeout=2.0).model
    info = {
        "prompt": params.prompt, "all_prompts": [params.prompt] * len(seeds),
        "negative_prompt": params.negative_prompt, "all_negative_prompts": [params.negative_prompt] * len(seeds),
        "seed": params.seed, "all_seeds": seeds, "subseed": -1, "all_subseeds": [-1] * len(seeds),
        "subseed_strength": 0, "width": params.width, "height": params.height, "sampler_name": sampler,
        "cfg_scale": params.guidance_scale, "steps": params.steps, "batch_size": r.batch_size or 1,
        "n_iter": r.n_iter or 1, "restore_faces": params.face_restoration is not None,
        "sd_model_name": PurePath(model).name,
        "tiling": params.tiling, "not_applied": notes,
        "seed_resize_from_w": -1, "seed_resize_from_h": -1, "clip_skip": 1, "index_of_first_image": 0,
        "denoising_strength": params.strength if params.mode != "txt2img" else (
            params.hires.strength if params.hires else 0),
        "is_using_inpainting_conditioning": False,
        "infotexts": [infotext(params, s, model, sampler, done.lora_hashes) for s in seeds],
        "job_timestamp": time.strftime("%Y%m%d%H%M%S", time.localtime(done.created_at)),
        "interrupted": done.interrupted, "job_id": done.job_id,
    }
    return jsonify(images=[base64.b64encode(data).decode("ascii") for _, data in images],
                   parameters=raw, info=json.dumps(info))


@bp.get("/progress")
def progress():
    """The caller's own running job, else its first queued one, else idle (never another's)."""
    sv = services()
    mine = sv.client.unfinished_jobs(owner())
    idle = {"progress": 0.0, "eta_relative": 0.0, "current_image": None, "textinfo": None,
            "state": {"skipped": False, "interrupted": False, "job": "", "job_count": len(mine),
                      "job_timestamp": "0", "job_no": 0, "sampling_step": 0, "sampling_steps": 0}}
    if not mine:
        return jsonify(idle)
    job = mine[0]  # the running one comes first
    p = job.progress
    share, steps, textinfo = task_progress(job)
    idle["state"].update(job=job.job_id, job_no=p.image_index if p else 0,
                         sampling_step=p.step if p else 0, sampling_steps=steps,
                         interrupted=job.interrupted, job_timestamp=time.strftime(
                             "%Y%m%d%H%M%S", time.localtime(job.created_at)))
    idle.update(progress=share, eta_relative=(p.eta_seconds or 0.0) if p else 0.0, textinfo=textinfo,
                current_image=_preview_b64(sv, job.job_id) if p and p.preview_step else None)
    return jsonify(idle)


def task_progress(job: JobView) -> tuple[float, int, str]:
    """A job's share done (0-1, over its n images), its steps per image (both hires passes; an upscale's
    tiles) and A1111's textinfo: what /progress and /internal/progress say of it."""
    p = job.progress
    done, total = steps_done(job)
    steps = total // max(1, job.params.n)
    textinfo = (p.detail if p and p.detail else "") or f"step {p.step if p else 0}/{steps}"
    return round(done / total, 4), steps, textinfo


def _preview_b64(sv, job_id: str) -> str | None:
    try:
        return base64.b64encode(sv.client.fetch_preview(job_id, owner())[1]).decode("ascii")
    except RemoteError:
        return None


def _stop_running(mode: StopMode):
    """A1111 has one global job; here each client stops only its own running job."""
    sv = services()
    running = [job for job in sv.client.unfinished_jobs(owner()) if job.state is JobState.RUNNING]
    for job in running:
        try:
            sv.client.cancel(job.job_id, mode, owner())
        except RemoteError:
            pass  # it finished meanwhile: nothing to stop, as in A1111
    return jsonify({})


@bp.post("/interrupt")
def interrupt():
    return _stop_running(StopMode.INTERRUPT)


@bp.post("/skip")
def skip():
    return _stop_running(StopMode.SKIP)


@bp.get("/sd-models")
def sd_models():
    """Every model a request may name, titled as A1111 titles checkpoints."""
    return jsonify([{"title": checkpoint_title(m), "model_name": m.name, "hash": m.hash or None, "sha256": None,
                     "filename": m.source, "config": None} for m in services().model_list(fresh=True).models])


@bp.get("/loras")
def loras():
    """The LoRAs, for <lora:NAME:WEIGHT> in prompts (A1111's shape; ``path`` is the file's name only)."""
    return jsonify([{"name": lora.name, "alias": lora.name, "path": lora.file, "metadata": {}}
                    for lora in services().model_list(fresh=True).loras])


@bp.post("/refresh-checkpoints")
def refresh_checkpoints():
    return jsonify(None)  # the model server looks at its folders again whenever they change


@bp.post("/refresh-loras")
def refresh_loras():
    return jsonify(None)


@bp.get("/samplers")
def samplers():
    return jsonify([{"name": name, "aliases": aliases, "options": {}} for name, (_, aliases) in SAMPLERS.items()])


@bp.get("/schedulers")
def schedulers():
    return jsonify([{"name": name, "label": label, "aliases": None, "default_rho": -1, "need_inner_model": False}
                    for name, label in SCHEDULERS])


@bp.route("/options", methods=["GET", "POST"])
def options():
    """A1111's options with its defaults (``a1111_options``); a write is this client's own (A1111's
    are global: one user's checkpoint switch would change everyone's images). The honoured ones
    (checkpoint, samples_format, jpeg_quality, token merging) apply to this client's later requests."""
    sv = services()
    if request.method == "POST":
        body = decode_object(request.get_data(cache=False), "Send a JSON object of A1111 options.")
        changes = checked(body)
        title = body.get("sd_model_checkpoint")
        if title is not None:
            models = sv.model_list(fresh=True).models
            name = _checkpoint(title) if isinstance(title, str) else ""
            if name not in {m.name for m in models}:
                raise ApiError(400, "invalid_params", f"unknown checkpoint {str(title)[:200]!r}",
                               f"Use a title from GET /sdapi/v1/sd-models: {', '.join(m.name for m in models)[:500]}.",
                               field="sd_model_checkpoint")
            changes["sd_model_checkpoint"] = name
        if changes:
            sv.client_options.update(owner(), changes)
        return jsonify(None)
    models = sv.model_list().models
    chosen = sv.client_options.get(owner())
    name = chosen.get("sd_model_checkpoint", "")
    current = next((m for m in models if m.name == name), None) or next((m for m in models if m.default), None)
    return jsonify({**DEFAULTS, **{k: v for k, v in chosen.items() if k in DEFAULTS},
                    "sd_model_checkpoint": checkpoint_title(current) if current else "",
                    "sd_checkpoint_hash": current.hash or None if current else None})


# Listings A1111 clients read at start. What this server has none of is an empty list in A1111's shape.
@bp.get("/cmd-flags")
def cmd_flags():
    """A1111's command-line flags as this server would have them (no paths: never a server's folder)."""
    return jsonify(api=True, nowebui=True, listen=False, use_cpu=["all"], precision="autocast", no_half=False,
                   lowvram=False, medvram=False, skip_torch_cuda_test=True, disable_safe_unpickle=False,
                   ckpt_dir=None, lora_dir=None, embeddings_dir=None, hypernetwork_dir=None)


@bp.get("/hypernetworks")
@bp.get("/prompt-styles")
def empty_listing():
    return jsonify([])


@bp.get("/embeddings")
def embeddings():
    return jsonify(loaded={}, skipped={})


@bp.get("/scripts")
def scripts():
    return jsonify(txt2img=[], img2img=[])
