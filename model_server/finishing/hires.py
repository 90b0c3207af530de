"""The hires fix (A1111's): the image made at the job's size, upscaled, then repainted at the larger
size by an image-to-image pass, as one job whose steps count both passes.

A latent upscaler resizes the first pass's latents (no decode, no encode); a pixel upscaler
(Lanczos, or a model file) works on the decoded image. The second pass runs the job's own
model, LoRAs and preset at ``hires.strength`` of its steps, with the hires prompt if one is given.
An interrupt or skip during the first pass carries into the second, which then stops after its
first step and decodes: the job still ends with an image of the size it asked for.
"""

from __future__ import annotations

import math

import msgspec

from model_server.finishing.upscalers import Upscalers
from protocol.messages import GenerationParams, hires_size
from protocol.upscalers import LATENT_UPSCALERS


def second_pass(params: GenerationParams) -> GenerationParams:
    """The second pass as an image-to-image job of its own (at least one step, as steps_run counts it)."""
    h = params.hires
    width, height = hires_size(params)
    steps = h.steps or params.steps
    # At least one step: diffusers runs int(steps x strength), and 49 x (1/49) is 0.999... in floating point,
    # so the floor is the next number above 1/steps (never above 1).
    floor = min(1.0, math.nextafter(1 / steps, 2.0))
    return msgspec.structs.replace(params, hires=None, mode="img2img", width=width, height=height, steps=steps,
                                   strength=max(h.strength, floor), prompt=h.prompt or params.prompt,
                                   negative_prompt=h.negative_prompt or params.negative_prompt)


def generate_hires(pipeline, upscalers: Upscalers, params: GenerationParams, seed: int, on_step, stop, report,
                   control=None):
    """One image through both passes; ``on_step`` counts on from the first pass into the second. Control
    maps steer both passes (A1111's "both"), resized to each pass's size."""
    steer = {"control": control} if control else {}
    first = msgspec.structs.replace(params, hires=None)
    second = second_pass(params)
    latent = params.hires.upscaler in LATENT_UPSCALERS
    made = pipeline.generate(first, seed, on_step, stop, output="latents" if latent else "upscale", **steer)
    if latent:
        start = pipeline.resize_latents(made, second.width, second.height, params.hires.upscaler)
    else:
        report(f"hires fix: upscaling to {second.width}x{second.height} with {params.hires.upscaler}")
        start = upscalers.upscale(params.hires.upscaler, made, second.width, second.height,
                                  lambda done, total, seconds: None, stop)
        if start is None:  # interrupted between tiles: the first pass's image is what there is
            return made
    report(f"hires fix: second pass at {second.width}x{second.height}")
    offset = first.steps
    return pipeline.generate(second, seed, lambda step, seconds, preview=None: on_step(offset + step, seconds, preview),
                             stop, init_image=start, **steer)
