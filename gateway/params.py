"""Generation parameters as HTTP clients send them: the protocol's contract, optional, with defaults.

The request type is derived from ``GenerationParams`` (protocol.messages) narrowed to this
deployment's limits (protocol.contract), so the bounds are written once and the documented
limits are the enforced ones: the same type feeds ``/openapi.json``. Every field may be left
out (the preset or the contract supplies it) except the prompt. Every façade (native, OpenAI,
A1111) ends in :meth:`ParamValidator.to_params`.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
from typing import Annotated, Callable, Literal, NamedTuple

import msgspec
from flask import request
from msgspec import Meta

from common.webhook_hosts import callback_violation
from gateway.errors import ApiError
from gateway.json_body import EXAMPLE, convert, decode_object
from gateway.settings import GatewaySettings
from protocol.contract import FieldSpec, field_of, field_specs, hires_violation, runs_no_step, violation
from protocol.messages import MAX_LORAS, MAX_SEED, ControlUnit, GenerationParams, LoraRef, ModelEntry
from protocol.presets import PRESET_NAMES, PRESETS, Preset
from protocol.upscalers import DEFAULT_UPSCALER

# C0/C1 control characters other than tab and newline: invisible, and nothing a prompt needs.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


class ControlRequest(ControlUnit, kw_only=True):
    """A control unit as HTTP clients send it: the unit, its image (base64; left out, the init image) and its
    mask (base64; white where it acts; for the inpaint module, the part to fill)."""

    image: str | None = None
    mask: str | None = None


# What the HTTP API takes differently from the wire: a named preset only ("" is older gateways'), control units
# with their images.
_HTTP_TYPES = {"preset": Literal[PRESET_NAMES], "controls": list[ControlRequest]}
_EXAMPLES = {"prompt": ["a cat"]}
_DERIVED = {"mode"}  # set from the request (an init image makes it img2img), never sent
_UPSCALE_FIELDS = {"upscale": "scale", "upscale_width": "width", "upscale_height": "height"}  # as HTTP names them
# An upscale job's fields (POST /v1/upscale), not a generation's.
_UPSCALE_ONLY = {"upscaler", "upscale", "upscale_width", "upscale_height", "upscaler_2", "upscaler_2_visibility"}
_DATA_URL = re.compile(r"^data:image/[a-z0-9.+-]+;base64,", re.IGNORECASE)
# A1111's prompt syntax for LoRAs: <lora:NAME> or <lora:NAME:WEIGHT> (LyCORIS' <lyco:...> too). A third
# part, A1111's separate UNet weight, is accepted; one weight applies to the whole LoRA here.
_LORA_TAG = re.compile(r"<(?:lora|lyco):([^:<>]*)(?::([^:<>]*))?(?::[^<>]*)?>", re.IGNORECASE)
_LORA_HINT = "Write <lora:NAME:WEIGHT> with a name from GET /v1/loras and a weight such as 0.8."


class Generation(NamedTuple):
    """A validated request: its parameters and, for img2img and inpaint, the images as uploaded."""

    params: GenerationParams
    init_image: bytes = b""
    mask: bytes = b""
    mask_from: str = "luminance"  # "alpha": transparent repaints (OpenAI's edits)
    control_images: tuple[bytes, ...] = ()  # one per control unit; b"": the init image
    control_masks: tuple[bytes, ...] = ()  # none, or one per control unit; b"": that unit has none

    def uploads(self) -> dict:
        """The images as ``ModelClient.submit`` takes them."""
        return {"init_image": self.init_image, "mask": self.mask, "mask_from": self.mask_from,
                "control_images": self.control_images, "control_masks": self.control_masks}


def lora_tags(prompt: str) -> tuple[str, list[dict]]:
    """The prompt without its <lora:NAME:WEIGHT> tags, and the LoRAs they name (weight 1 when left out)."""
    found = []
    for match in _LORA_TAG.finditer(prompt):
        name, weight = match.group(1).strip(), (match.group(2) or "").strip()
        try:
            value = float(weight) if weight else 1.0
        except ValueError:
            raise ApiError(400, "invalid_params", f"the LoRA tag {match.group(0)[:120]!r} has no valid weight",
                           _LORA_HINT, field="prompt") from None
        found.append({"name": name, "weight": value})
    return _LORA_TAG.sub(" ", prompt), found


def clean_text(text: str) -> str:
    """Prompts without control characters (tabs and newlines become spaces), trimmed."""
    return " ".join(_CONTROL.sub("", text).split())


def presets(s: GatewaySettings) -> dict[str, Preset]:
    """The presets as this gateway applies them (DEFAULT_STEPS is the quality preset's steps)."""
    return {**PRESETS, "quality": msgspec.structs.replace(PRESETS["quality"], steps=s.default_steps)}


def _http_field(spec: FieldSpec):
    base = _HTTP_TYPES.get(spec.name, spec.base)
    meta = Meta(**spec.meta, description=spec.doc, **({"examples": _EXAMPLES[spec.name]}
                                                       if spec.name in _EXAMPLES else {}))
    annotated = Annotated[base, meta]
    if spec.name == "prompt":
        return (spec.name, annotated)
    return (spec.name, annotated | None, None)


def make_request_type(s: GatewaySettings, name: str = "GenerateRequest") -> type:
    """The HTTP request type: every contract field, bounded by this deployment's limits, and the
    init image (base64) that makes a request image-to-image."""
    fields = [_http_field(spec) for spec in field_specs(s.limits) if spec.name not in _DERIVED | _UPSCALE_ONLY]
    fields.append(("init_image", Annotated[str, Meta(description=(
        "Image-to-image: the image to start from, base64 (a data: URL too), PNG, JPEG or WebP, at most "
        f"{s.max_upload_bytes // 2**20} MiB; it is resized to width x height, and strength says how much of it "
        "is repainted."))] | None, None))
    fields.append(("mask", Annotated[str, Meta(description=(
        "Inpainting, with init_image: where to repaint, base64 like init_image; white repaints, black keeps. "
        "It is resized to width x height."))] | None, None))
    return msgspec.defstruct(name, fields, kw_only=True)


class ParamValidator:
    """Turns a request body (or a façade's fields) into GenerationParams: validated against this
    deployment's bounds, defaults filled from the preset, a seed chosen."""

    def __init__(self, settings: GatewaySettings, model_entry: Callable[[str], ModelEntry | None] | None = None):
        self.settings = settings
        # A model's listing ("" the default model's), or None when unknown: a one-step model (SD-Turbo...) gets
        # the turbo preset by default, and a request that gives no size gets the model's own (SDXL: 1024).
        self.model_entry = model_entry or (lambda name: None)
        self.request_type = make_request_type(settings)
        self.presets = presets(settings)
        self.hints = {spec.name: spec.hint for spec in field_specs(settings.limits)}

    def parse_json(self, raw: bytes) -> Generation:
        """Decode and validate a JSON request body."""
        return self.parse_object(decode_object(raw))

    def parse_object(self, obj: dict, mask_from: str = "luminance", strict: bool = True,
                     files: dict[str, bytes] | None = None) -> Generation:
        """Validate already-decoded fields (used by the compatibility façades too). ``mask_from``
        "alpha" (OpenAI's edits): inpaint by the images' transparency, with or without a mask.
        ``strict=False`` takes numbers sent as strings, and ``files`` the images (``init_image``,
        ``mask``) as uploaded: a multipart form."""
        try:
            request = convert(obj, self.request_type, strict=strict)
        except msgspec.ValidationError as exc:
            raise self._invalid(exc) from None
        return self.to_params(request, mask_from, files or {})

    def parse_body(self) -> Generation:
        """The request's body: JSON (images base64) or a multipart form (images as files)."""
        if request.mimetype == "multipart/form-data":
            files = {name: self.checked_upload(f.read(), name) for name, f in request.files.items()
                     if name in ("init_image", "mask")}
            return self.parse_object(dict(request.form.items()), strict=False, files=files)
        return self.parse_json(request.get_data(cache=False))

    def _invalid(self, exc: msgspec.ValidationError) -> ApiError:
        text = str(exc)
        missing = re.search(r"missing required field `(\w+)`", text)
        field = missing.group(1) if missing else field_of(text)
        if missing:
            return ApiError(400, "invalid_params", f"{field} is required", 'Send {"prompt": "a cat"} at least.',
                            field=field)
        if field in ("prompt", "negative_prompt") and "length <=" in text:
            return ApiError(400, "invalid_params",
                            f"{field} is too long: at most {self.settings.max_prompt_length} characters",
                            self.hints[field], field=field)
        if field == "prompt" and ("length >=" in text or "regex" in text):
            return _empty_prompt()
        return ApiError(400, "invalid_params", f"invalid {field or 'request'}: {text}",
                        self.hints.get(field, f"Check the request against GET /openapi.json. {EXAMPLE}"), field=field)

    def to_params(self, r, mask_from: str = "luminance", files: dict[str, bytes] | None = None) -> Generation:
        """Fill what the request left out: its preset's values, else the contract's defaults."""
        s = self.settings
        text, tagged = lora_tags(r.prompt)
        prompt = clean_text(text)
        if not prompt:
            raise _empty_prompt()
        loras = _merged_loras(r.loras or [], tagged)
        files = files or {}
        init_image = files.get("init_image") or self.decoded_upload(r.init_image, "init_image")
        mask = files.get("mask") or self.decoded_upload(r.mask, "mask")
        if mask and not init_image:
            raise ApiError(400, "invalid_params", "a mask needs an init_image to repaint",
                           "Send init_image with the mask.", field="mask")
        inpaint = bool(mask) or (bool(init_image) and mask_from == "alpha")
        if r.mask_blur is not None and not mask and mask_from != "alpha":
            raise ApiError(400, "invalid_params", "mask_blur applies to inpainting only",
                           "Send a mask with it, or leave mask_blur out.", field="mask_blur")
        if r.strength is not None and not init_image:
            raise ApiError(400, "invalid_params", "strength applies to image-to-image only",
                           "Send init_image with it, or leave strength out.", field="strength")
        entry = self.model_entry(r.model or "") if r.width is None or r.height is None or not r.preset else None
        one_step = bool(r.model and entry and entry.one_step)
        preset = self.presets[r.preset or ("turbo" if one_step else s.default_preset)]
        width, height = ((entry.default_width, entry.default_height) if entry and entry.default_width
                         else (s.default_size, s.default_size))
        defaults = {"width": width, "height": height,
                    **{f: getattr(preset, f) for f in ("steps", "guidance_scale", "scheduler", "deep_cache",
                                                       "token_merging")}}
        values = {}
        for field in msgspec.structs.fields(GenerationParams):
            given = getattr(r, field.name, None)
            if given is None:
                given = defaults.get(field.name, field.default)
            values[field.name] = given
        units, control_images, control_masks = self._controls(r.controls or [], bool(init_image))
        values.update(prompt=prompt, negative_prompt=clean_text(r.negative_prompt or ""), preset=preset.name,
                      controls=units,
                      seed=secrets.randbelow(MAX_SEED + 1) if r.seed is None else r.seed,
                      guidance_scale=float(values["guidance_scale"]), token_merging=float(values["token_merging"]),
                      strength=float(values["strength"]), loras=loras, model=r.model or "",
                      mode="inpaint" if inpaint else "img2img" if init_image else "txt2img")
        params = GenerationParams(**values)
        no_step = runs_no_step(params)
        if no_step:
            raise ApiError(400, "invalid_params", *no_step, field="strength")
        broken = hires_violation(params, s.limits) or callback_violation(params.callback_url, s.webhook_hosts)
        if broken:
            raise ApiError(400, "invalid_params", broken[1], broken[2], field=broken[0])
        return Generation(params, init_image, mask, mask_from, control_images, control_masks)

    def _controls(self, given: list, has_init_image: bool) -> tuple[list[ControlUnit], tuple[bytes, ...],
                                                                    tuple[bytes, ...]]:
        """The units without their images, the images (b"": the init image's) and the masks (none when no unit
        has one; b"": this unit has none), each size checked."""
        units, images, masks = [], [], []
        for i, unit in enumerate(given):
            image = self.decoded_upload(unit.image, "controls")
            masks.append(self.decoded_upload(unit.mask, "controls"))
            if not image and not has_init_image:
                raise ApiError(400, "invalid_params", f"controls[{i}] has no image",
                               "Send each unit's image (base64), or an init_image for the units to share.",
                               field="controls")
            units.append(ControlUnit(**{f: getattr(unit, f) for f in ControlUnit.__struct_fields__}))
            images.append(image)
        return units, tuple(images), tuple(masks) if any(masks) else ()

    def upscale(self, image: bytes, upscaler: str | None = None, scale: float | None = None,
                width: int | None = None, height: int | None = None, fmt: str | None = None,
                quality: int | None = None, **finishing) -> Generation:
        """An upscale job (no diffusion): ``image`` by ``scale`` (2 when neither is given), or to ``width`` x
        ``height``, covered and centre-cropped, by ``upscaler`` (GET /v1/upscalers; Lanczos by default).
        ``finishing``: the job's other upscale fields as GenerationParams names them (``face_restoration``,
        ``upscaler_2`` and its visibility). Its prompt only labels it; the model server checks the result's
        size once it has read the image."""
        if not image:
            raise ApiError(400, "invalid_params", "image is required", "Send the image to upscale (base64 or a "
                           "file).", field="image")
        if scale is None and width is None and height is None:
            scale = 2.0
        if scale is not None and not 1 <= scale:
            raise ApiError(400, "invalid_params", f"scale {scale:g} would not enlarge the image",
                           "Use a factor from 1, such as 2 or 4.", field="scale")
        if scale is None and not (width and height):
            raise ApiError(400, "invalid_params", "an upscale to a size needs both width and height",
                           "Send width and height, or scale instead.", field="width" if not width else "height")
        name = upscaler or DEFAULT_UPSCALER
        label = f"upscale x{scale:g} with {name}" if scale else f"upscale to {width}x{height} with {name}"
        values = {"prompt": clean_text(label)[:self.settings.max_prompt_length], "seed": 0, "steps": 1,
                  "mode": "upscale", "upscaler": name, "upscale": scale or 0.0, "format": fmt or "png",
                  "quality": 90 if quality is None else quality,
                  **{key: value for key, value in finishing.items() if value is not None}}
        if not scale:
            values.update(upscale_width=width, upscale_height=height)
        try:
            params = msgspec.convert(values, GenerationParams)
        except msgspec.ValidationError as exc:
            field = _UPSCALE_FIELDS.get(field_of(str(exc)) or "", field_of(str(exc)) or "")
            raise ApiError(400, "invalid_params", f"invalid {field or 'request'}: {exc}",
                           "Check the request against GET /openapi.json.", field=field) from None
        broken = violation(params, self.settings.limits) or callback_violation(params.callback_url,
                                                                                self.settings.webhook_hosts)
        if broken:
            field = _UPSCALE_FIELDS.get(broken[0], broken[0])
            raise ApiError(400, "invalid_params", broken[1].replace(broken[0], field), broken[2], field=field)
        return Generation(params, self.checked_upload(image, "image"))

    def detect(self, image: bytes, unit: ControlUnit, fmt: str = "png") -> Generation:
        """A detect job: ``image`` through ``unit``'s preprocessor (its module, resolution and thresholds), no
        model; its prompt only labels it."""
        if not image:
            raise ApiError(400, "invalid_params", "image is required", "Send the image to preprocess (base64).",
                           field="image")
        params = GenerationParams(prompt=f"detect {unit.module}"[:self.settings.max_prompt_length], seed=0, steps=1,
                                  mode="detect", controls=[unit], format=fmt)
        return Generation(params, self.checked_upload(image, "image"))

    def decoded_upload(self, text: str | None, field: str) -> bytes:
        """A base64 upload (a data: URL too) as bytes, its size checked; b"" when absent."""
        if not text:
            return b""
        try:
            data = base64.b64decode(_DATA_URL.sub("", text.strip(), count=1), validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(400, "invalid_params", f"{field} is not valid base64",
                           "Send the image file's bytes base64-encoded (a data: URL works too).",
                           field=field) from None
        return self.checked_upload(data, field)

    def checked_upload(self, data: bytes, field: str) -> bytes:
        """An uploaded image's size against MAX_UPLOAD_BYTES (its content is the model server's to check)."""
        if len(data) > self.settings.max_upload_bytes:
            raise ApiError(413, "upload_too_large", f"{field} is {len(data):,} bytes, more than "
                           f"{self.settings.max_upload_bytes:,}", "Send a smaller image (MAX_UPLOAD_BYTES).",
                           field=field)
        return data


def _merged_loras(given: list, tagged: list[dict]) -> list[LoraRef]:
    """The request's ``loras`` and its prompt's tags (a name in both: the ``loras`` entry wins), checked
    against the contract's bounds."""
    named = {ref.name for ref in given}
    merged = [{"name": ref.name, "weight": ref.weight} for ref in given]
    merged += [tag for tag in tagged if tag["name"] not in named]
    if len(merged) > MAX_LORAS:
        raise ApiError(400, "invalid_params", f"{len(merged)} LoRAs asked for; at most {MAX_LORAS} at once",
                       f"Use at most {MAX_LORAS} LoRAs.", field="loras")
    try:
        return msgspec.convert(merged, list[LoraRef])
    except msgspec.ValidationError as exc:
        raise ApiError(400, "invalid_params", f"invalid LoRA: {exc}", _LORA_HINT, field="loras") from None


def _empty_prompt() -> ApiError:
    return ApiError(400, "invalid_params", "prompt must not be empty",
                    'Describe the image, e.g. {"prompt": "a cat"}.', field="prompt")
