"""Generation parameters as HTTP clients send them: the protocol's contract, optional, with defaults.

The request type is derived from ``GenerationParams`` (protocol.messages) narrowed to this
deployment's limits (protocol.contract), so the bounds are written once and the documented
limits are the enforced ones: the same type feeds ``/openapi.json``. Every field may be left
out (the preset or the contract supplies it) except the prompt. Every façade (native, OpenAI,
A1111) ends in :meth:`ParamValidator.to_params`.
"""

from __future__ import annotations

import re
import secrets
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from gateway.errors import ApiError
from gateway.json_body import EXAMPLE, convert, decode_object
from gateway.settings import GatewaySettings
from protocol.contract import FieldSpec, field_of, field_specs
from protocol.messages import MAX_SEED, GenerationParams
from protocol.presets import PRESET_NAMES, PRESETS, Preset

# C0/C1 control characters other than tab and newline: invisible, and nothing a prompt needs.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
# What the HTTP API takes differently from the wire: a named preset only ("" is older gateways').
_HTTP_TYPES = {"preset": Literal[PRESET_NAMES]}
_EXAMPLES = {"prompt": ["a cat"]}


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
    """The HTTP request type: every contract field, bounded by this deployment's limits."""
    return msgspec.defstruct(name, [_http_field(spec) for spec in field_specs(s.limits)], kw_only=True)


class ParamValidator:
    """Turns a request body (or a façade's fields) into GenerationParams: validated against this
    deployment's bounds, defaults filled from the preset, a seed chosen."""

    def __init__(self, settings: GatewaySettings):
        self.settings = settings
        self.request_type = make_request_type(settings)
        self.presets = presets(settings)
        self.hints = {spec.name: spec.hint for spec in field_specs(settings.limits)}

    def parse_json(self, raw: bytes) -> GenerationParams:
        """Decode and validate a JSON request body."""
        return self.parse_object(decode_object(raw))

    def parse_object(self, obj: dict) -> GenerationParams:
        """Validate already-decoded fields (used by the compatibility façades too)."""
        try:
            request = convert(obj, self.request_type)
        except msgspec.ValidationError as exc:
            raise self._invalid(exc) from None
        return self.to_params(request)

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

    def to_params(self, r) -> GenerationParams:
        """Fill what the request left out: its preset's values, else the contract's defaults."""
        s = self.settings
        prompt = clean_text(r.prompt)
        if not prompt:
            raise _empty_prompt()
        preset = self.presets[r.preset or s.default_preset]
        defaults = {"width": s.default_size, "height": s.default_size,
                    **{f: getattr(preset, f) for f in ("steps", "guidance_scale", "scheduler", "deep_cache",
                                                       "token_merging")}}
        values = {}
        for field in msgspec.structs.fields(GenerationParams):
            given = getattr(r, field.name)
            if given is None:
                given = defaults.get(field.name, field.default)
            values[field.name] = given
        values.update(prompt=prompt, negative_prompt=clean_text(r.negative_prompt or ""), preset=preset.name,
                      seed=secrets.randbelow(MAX_SEED + 1) if r.seed is None else r.seed,
                      guidance_scale=float(values["guidance_scale"]), token_merging=float(values["token_merging"]))
        return GenerationParams(**values)


def _empty_prompt() -> ApiError:
    return ApiError(400, "invalid_params", "prompt must not be empty",
                    'Describe the image, e.g. {"prompt": "a cat"}.', field="prompt")
