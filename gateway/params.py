"""The one definition of generation parameters: validation, defaults and their JSON Schema.

The request type is built from the settings (limits are configuration), decoded with msgspec,
and the same type feeds ``/openapi.json``, so the documented limits are the enforced ones.
Every façade (native, OpenAI, A1111) ends in :meth:`ParamValidator.to_params`.
"""

from __future__ import annotations

import re
import secrets
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from gateway.errors import ApiError
from gateway.settings import GatewaySettings
from protocol.messages import IMAGE_FORMATS, MAX_TOKEN_MERGING, SCHEDULERS, GenerationParams
from protocol.presets import PRESET_NAMES, PRESETS, Preset

MAX_SEED = 2**32 - 1
_PATH = re.compile(r"at `\$\.(\w+)")
# C0/C1 control characters other than tab and newline: invisible, and nothing a prompt needs.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def clean_text(text: str) -> str:
    """Prompts without control characters (tabs and newlines become spaces), trimmed."""
    return " ".join(_CONTROL.sub("", text).split())


def presets(s: GatewaySettings) -> dict[str, Preset]:
    """The presets as this gateway applies them (DEFAULT_STEPS is the quality preset's steps)."""
    return {**PRESETS, "quality": msgspec.structs.replace(PRESETS["quality"], steps=s.default_steps)}


def make_request_type(s: GatewaySettings, name: str = "GenerateRequest") -> type:
    def size(maximum: int, what: str):
        return Annotated[int, Meta(ge=s.min_size, le=maximum, multiple_of=8,
                                   description=f"Image {what} in pixels, a multiple of 8 "
                                               f"({s.min_size}-{maximum}; default {s.default_size}).")]

    fields = [
        ("prompt", Annotated[str, Meta(max_length=s.max_prompt_length, examples=["a cat"],
                                       description=f"What to draw; 1-{s.max_prompt_length} characters.")]),
        ("negative_prompt", Annotated[str, Meta(max_length=s.max_prompt_length,
                                                description="What to steer away from.")] | None, None),
        ("preset", Annotated[Literal[PRESET_NAMES], Meta(description=(
            f"Speed/quality preset (default {s.default_preset}): it sets the default steps, guidance and "
            "sampler, and 'fast' also switches on LCM-LoRA and the tiny VAE. GET /v1/presets lists them. "
            + " ".join(f"{p.name}: {p.summary}" for p in PRESETS.values())))] | None, None),
        ("steps", Annotated[int, Meta(ge=1, le=s.max_steps, description=(
            f"Denoising steps (1-{s.max_steps}; default: the preset's, {s.default_steps} for quality).")) ] | None, None),
        ("guidance_scale", Annotated[float, Meta(ge=0, le=30, description=(
            "Classifier-free guidance (0-30; default: the preset's, 7.5 for quality); 1 or less disables "
            "it and halves the work."))] | None, None),
        ("deep_cache", Annotated[int, Meta(ge=0, le=10, description=(
            "Step caching (DeepCache): run the UNet in full every Nth step and only its shallow layers in "
            "between; 2-5 trade some detail for up to ~1.7x speed, 0 or 1 is off (default: the preset's, "
            "3 for balanced)."))] | None, None),
        ("token_merging", Annotated[float, Meta(ge=0, le=MAX_TOKEN_MERGING, description=(
            "Token merging ratio (ToMe, A1111's 'token merging ratio'): the share of the 4,096 tokens of "
            "a 512x512 image's largest self-attentions merged into similar ones before attention; 0.5 "
            f"made a step 12-20% faster on a 2-core CPU, for a small loss of detail (0-{MAX_TOKEN_MERGING}; default: "
            "the preset's, 0 for all)."))] | None, None),
        ("width", size(s.max_width, "width") | None, None),
        ("height", size(s.max_height, "height") | None, None),
        ("seed", Annotated[int, Meta(ge=0, le=MAX_SEED, description=(
            "Random seed; the same seed and parameters give the same image. Random when absent; "
            "always reported back."))] | None, None),
        ("scheduler", Annotated[Literal[SCHEDULERS], Meta(description=(
            "Sampler (default: the preset's); 'default' is the model's own (PNDM for SD v1.4); 'lcm' "
            "only suits LCM weights (the fast preset)."))] | None, None),
        ("n", Annotated[int, Meta(ge=1, le=s.max_images, description=(
            f"Images to make (1-{s.max_images}), with seeds seed, seed+1, ...; /generate takes 1."))] | None, None),
        ("format", Annotated[Literal[IMAGE_FORMATS], Meta(description="Output format (default png).")] | None, None),
        ("quality", Annotated[int, Meta(ge=1, le=100, description="JPEG/WebP quality (default 90).")] | None, None),
        ("preview", Annotated[bool, Meta(description=(
            "Keep a low-res preview while the job runs: GET /v1/jobs/{id}/preview (default false)."))] | None, None),
    ]
    return msgspec.defstruct(name, fields, kw_only=True)


class ParamValidator:
    def __init__(self, settings: GatewaySettings):
        self.settings = settings
        self.request_type = make_request_type(settings)
        self.presets = presets(settings)
        self._decoder = msgspec.json.Decoder(self.request_type)
        self._hints = self._field_hints(settings)

    @staticmethod
    def _field_hints(s: GatewaySettings) -> dict[str, str]:
        return {
            "prompt": f"Try a shorter prompt: at most {s.max_prompt_length} characters.",
            "negative_prompt": f"Keep the negative prompt within {s.max_prompt_length} characters.",
            "preset": f"Use one of: {', '.join(PRESET_NAMES)} (GET /v1/presets).",
            "deep_cache": "Use 0 (off) to 10; 3 caches two steps out of three.",
            "token_merging": f"Use a share from 0 (off) to {MAX_TOKEN_MERGING}; 0.5 is a common choice.",
            "steps": f"Use 1 to {s.max_steps} steps ({s.default_steps} is the default; fewer is faster).",
            "guidance_scale": "Use a number from 0 to 30 (7.5 is the default).",
            "width": f"Use a multiple of 8 from {s.min_size} to {s.max_width}.",
            "height": f"Use a multiple of 8 from {s.min_size} to {s.max_height}.",
            "seed": f"Use a whole number from 0 to {MAX_SEED}, or leave it out for a random one.",
            "scheduler": f"Use one of: {', '.join(SCHEDULERS)}.",
            "n": f"Ask for 1 to {s.max_images} images.",
            "format": f"Use one of: {', '.join(IMAGE_FORMATS)}.",
            "quality": "Use a whole number from 1 to 100.",
        }

    def parse_json(self, raw: bytes) -> GenerationParams:
        """Decode and validate a JSON request body."""
        if not raw.strip():
            raise ApiError(400, "invalid_json", "the request body is empty",
                           'Send a JSON object such as {"prompt": "a cat"}.')
        try:
            request = self._decoder.decode(raw)
        except msgspec.ValidationError as exc:
            raise self._invalid(exc) from None
        except msgspec.DecodeError as exc:
            raise ApiError(400, "invalid_json", f"the request body is not valid JSON ({exc})",
                           'Send a JSON object such as {"prompt": "a cat"} with Content-Type: application/json.') from None
        return self.to_params(request)

    def parse_object(self, obj: dict) -> GenerationParams:
        """Validate already-decoded fields (used by the compatibility façades)."""
        try:
            request = msgspec.convert(obj, self.request_type)
        except msgspec.ValidationError as exc:
            raise self._invalid(exc) from None
        return self.to_params(request)

    def _invalid(self, exc: msgspec.ValidationError) -> ApiError:
        text = str(exc)
        match = _PATH.search(text)
        missing = re.search(r"missing required field `(\w+)`", text)
        field = match.group(1) if match else (missing.group(1) if missing else None)
        if text.startswith("Expected `object`"):
            return ApiError(400, "invalid_params", "the request body must be a JSON object",
                            'Send a JSON object such as {"prompt": "a cat"}.')
        if field in ("prompt", "negative_prompt") and "length <=" in text:
            return ApiError(400, "invalid_params",
                            f"{field} is too long: at most {self.settings.max_prompt_length} characters",
                            self._hints[field], field=field)
        if missing:
            return ApiError(400, "invalid_params", f"{field} is required", 'Send {"prompt": "a cat"} at least.', field=field)
        return ApiError(400, "invalid_params", f"invalid {field or 'request'}: {text}",
                        self._hints.get(field, "Check the request against GET /openapi.json."), field=field)

    def to_params(self, r) -> GenerationParams:
        s = self.settings
        prompt = clean_text(r.prompt)
        if not prompt:
            raise ApiError(400, "invalid_params", "prompt must not be empty",
                           'Describe the image, e.g. {"prompt": "a cat"}.', field="prompt")

        def pick(value, default):
            return default if value is None else value

        preset = self.presets[r.preset or s.default_preset]

        return GenerationParams(
            prompt=prompt, negative_prompt=clean_text(r.negative_prompt or ""),
            seed=secrets.randbelow(MAX_SEED + 1) if r.seed is None else r.seed,
            steps=pick(r.steps, preset.steps), guidance_scale=float(pick(r.guidance_scale, preset.guidance_scale)),
            width=pick(r.width, s.default_size), height=pick(r.height, s.default_size),
            scheduler=pick(r.scheduler, preset.scheduler), n=pick(r.n, 1), format=pick(r.format, "png"),
            quality=pick(r.quality, 90), preview=bool(r.preview), preset=preset.name,
            deep_cache=pick(r.deep_cache, preset.deep_cache),
            token_merging=float(pick(r.token_merging, preset.token_merging)))
