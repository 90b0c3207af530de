"""The parameter contract as a deployment configures it: ``GenerationParams`` with tighter limits.

``GenerationParams`` (protocol.messages) carries the absolute bounds. A deployment narrows the
configurable ones (MAX_STEPS, MAX_WIDTH, ...) with :class:`Limits`; both sides read the same
environment variables, and both derive their checks from the one contract here:
- the model server decodes every ``Submit`` against the absolute bounds, then checks the params
  against :func:`params_type` for its limits (no hand-written checks);
- the gateway builds its request types and ``/openapi.json`` from :func:`field_specs`.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from typing import Any

import msgspec

from protocol.messages import (MAX_IMAGES, MAX_PROMPT_LENGTH, MAX_SIZE, MAX_STEPS, MAX_UPSCALED_SIZE, MIN_SIZE,
                               GenerationParams, hires_size, runs_diffusion, steps_run)
from protocol.presets import PRESETS

_META_KEYS = ("gt", "ge", "lt", "le", "multiple_of", "pattern", "min_length", "max_length")


@dataclasses.dataclass(frozen=True)
class Limits:
    """The configurable bounds (each within the absolute one) and the defaults docs mention."""

    max_prompt_length: int = 200
    max_steps: int = 100
    min_size: int = MIN_SIZE
    max_width: int = 1536  # SDXL's trained sizes (1216x832, 1344x768, 1536x640) fit
    max_height: int = 1536
    max_images: int = 4
    default_steps: int = 25
    default_size: int = 512
    default_preset: str = "quality"
    max_upscale_size: int = 4096

    def __post_init__(self):
        absolute = {"max_prompt_length": MAX_PROMPT_LENGTH, "max_steps": MAX_STEPS, "max_width": MAX_SIZE,
                    "max_height": MAX_SIZE, "max_images": MAX_IMAGES, "max_upscale_size": MAX_UPSCALED_SIZE}
        for name, ceiling in absolute.items():
            value = getattr(self, name)
            if not 1 <= value <= ceiling:
                raise ValueError(f"{name.upper()} must be 1-{ceiling} (the protocol's bound), got {value}")
        if self.min_size < MIN_SIZE or self.min_size % 8 or self.min_size > min(self.max_width, self.max_height):
            raise ValueError(f"the minimum size must be a multiple of 8 from {MIN_SIZE} to the maximum size")
        if self.default_size % 8 or not self.min_size <= self.default_size <= min(self.max_width, self.max_height):
            raise ValueError("DEFAULT_SIZE must be a multiple of 8 within MAX_WIDTH/MAX_HEIGHT")
        if not 1 <= self.default_steps <= self.max_steps:
            raise ValueError(f"DEFAULT_STEPS must be 1-{self.max_steps} (MAX_STEPS), got {self.default_steps}")
        if self.default_preset not in PRESETS:
            raise ValueError(f"DEFAULT_PRESET must be one of {', '.join(PRESETS)}, got {self.default_preset!r}")


@dataclasses.dataclass(frozen=True)
class FieldSpec:
    """One field of the contract with its bounds narrowed to a deployment's limits."""

    name: str
    base: Any  # int, float, str, bool or a Literal
    meta: dict  # msgspec.Meta keyword arguments: the bounds
    doc: str
    hint: str
    default: Any  # GenerationParams' default, or msgspec.NODEFAULT for required fields

    def annotated(self, description: bool = False):
        extra = {"description": self.doc} if description else {}
        return typing.Annotated[self.base, msgspec.Meta(**self.meta, **extra)] if self.meta or extra else self.base


def field_specs(limits: Limits) -> list[FieldSpec]:
    """Every GenerationParams field, in order, bounded by ``limits``, docs and hints filled in."""
    values = dataclasses.asdict(limits)
    hints = typing.get_type_hints(GenerationParams, include_extras=True)
    specs = []
    for info in msgspec.structs.fields(GenerationParams):
        base, meta = hints[info.name].__origin__, hints[info.name].__metadata__[0]
        bounds = {key: getattr(meta, key) for key in _META_KEYS if getattr(meta, key) is not None}
        extra = meta.extra
        if extra["limit"]:
            bounds["max_length" if "max_length" in bounds else "le"] = values[extra["limit"]]
        if extra["floor"]:
            bounds["ge"] = values[extra["floor"]]
        specs.append(FieldSpec(name=info.name, base=base, meta=bounds, doc=extra["doc"].format_map(values),
                               hint=extra["hint"].format_map(values), default=info.default))
    return specs


@functools.lru_cache(maxsize=8)
def params_type(limits: Limits) -> type:
    """GenerationParams with the bounds of ``limits``: what a model server so configured runs."""
    fields = [(s.name, s.annotated(), s.default) if s.default is not msgspec.NODEFAULT else (s.name, s.annotated())
              for s in field_specs(limits)]
    return msgspec.defstruct("BoundedParams", fields, kw_only=True)


def violation(params: GenerationParams, limits: Limits) -> tuple[str, str, str] | None:
    """``(field, message, hint)`` for the first bound of ``limits`` that ``params`` breaks, else None."""
    try:
        msgspec.convert(msgspec.structs.asdict(params), params_type(limits))
    except msgspec.ValidationError as exc:
        field = field_of(str(exc))
        spec = {s.name: s for s in field_specs(limits)}.get(field)
        return field or "params", f"invalid {field or 'params'}: {exc}", spec.hint if spec else ""
    return None


def runs_no_step(params: GenerationParams) -> tuple[str, str] | None:
    """``(message, hint)`` when an image job's steps x strength leaves no step to run, else None
    (a bound across two fields, so no single field's ``Meta`` can hold it)."""
    if params.mode == "txt2img" or not runs_diffusion(params) or steps_run(params) >= 1:
        return None
    return (f"{params.steps} steps at strength {params.strength:g} run no step",
            "Raise steps or strength so that steps x strength is at least 1.")


def hires_violation(params: GenerationParams, limits: Limits) -> tuple[str, str, str] | None:
    """``(field, message, hint)`` when a job's hires fix cannot run within ``limits``, else None: it is
    for text-to-image only, and its second pass is an image of the size bounds like any other."""
    if params.hires is None:
        return None
    if params.mode != "txt2img":
        return "hires", "the hires fix is for text-to-image jobs", "Leave hires out with an init image."
    width, height = hires_size(params)
    if not (limits.min_size <= width <= limits.max_width and limits.min_size <= height <= limits.max_height):
        return ("hires", f"the hires fix's size {width}x{height} is outside {limits.min_size}-{limits.max_width} x "
                f"{limits.min_size}-{limits.max_height}",
                "Lower hires.scale, or give hires.width and hires.height within MAX_WIDTH and MAX_HEIGHT.")
    return None


def upscale_size(width: int, height: int, params: GenerationParams) -> tuple[int, int]:
    """An upscale job's result size for an image of ``width`` x ``height``: by its factor, else the size it gives."""
    if params.upscale:
        return max(1, round(width * params.upscale)), max(1, round(height * params.upscale))
    return params.upscale_width, params.upscale_height


def field_of(validation_message: str) -> str | None:
    """The top-level field a msgspec validation message points at (``... - at `$.steps```)."""
    marker = validation_message.rfind("at `$.")
    if marker < 0:
        return None
    path = validation_message[marker + 6:].rstrip("`")
    return path.split(".")[0].split("[")[0] if path else None
