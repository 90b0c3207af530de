"""Pipeline objects over a loaded pipeline's very modules: another diffusers class (image-to-image,
inpainting), another UNet (OpenVINO's, an inpainting checkpoint's) or decoder (the tiny one) in place.
Making one copies no weights, so the engine makes each once and keeps it."""

from __future__ import annotations

import inspect

import diffusers


def pipeline_like(class_name: str, like, **overrides):
    """A pipeline of class ``class_name`` over ``like``'s modules, ``overrides`` replacing some. Only
    what the class takes is passed (SDXL's have no safety checker), and ``like``'s settings that the
    class shares (SDXL's zeroed empty negative prompt) carry over."""
    kind = getattr(diffusers, class_name)
    takes = inspect.signature(kind.__init__).parameters
    kwargs = {name: module for name, module in {**like.components, **overrides}.items() if name in takes}
    kwargs.update({key: like.config[key] for key in ("force_zeros_for_empty_prompt", "requires_aesthetics_score")
                   if key in takes and key in like.config})
    if "requires_safety_checker" in takes:
        kwargs["requires_safety_checker"] = False
    pipe = kind(**kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe
