"""The samplers a job may name (protocol.messages.SCHEDULERS), each made from the model's own
scheduler configuration, so its training schedule (betas, prediction type) carries over."""

from __future__ import annotations

from diffusers import (DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler,
                       EulerDiscreteScheduler, LCMScheduler, PNDMScheduler, UniPCMultistepScheduler)

FACTORIES = {
    "pndm": lambda cfg: PNDMScheduler.from_config(cfg, skip_prk_steps=True),
    "ddim": lambda cfg: DDIMScheduler.from_config(cfg),
    "euler": lambda cfg: EulerDiscreteScheduler.from_config(cfg),
    "euler_a": lambda cfg: EulerAncestralDiscreteScheduler.from_config(cfg),
    "dpmpp_2m": lambda cfg: DPMSolverMultistepScheduler.from_config(cfg, algorithm_type="dpmsolver++"),
    "dpmpp_2m_karras": lambda cfg: DPMSolverMultistepScheduler.from_config(
        cfg, algorithm_type="dpmsolver++", use_karras_sigmas=True),
    "unipc": lambda cfg: UniPCMultistepScheduler.from_config(cfg),
    "lcm": lambda cfg: LCMScheduler.from_config(cfg),
}


def make_scheduler(name: str, config, default: type, trailing: bool = False):
    """Scheduler ``name`` ("default": the model's own class ``default``) over ``config``; ``trailing``
    for few-step models, which sample from the last timestep (1 step starts at t=999, not t=1)."""
    if trailing:
        config = {**config, "timestep_spacing": "trailing"}
    if name == "default":
        return default.from_config(config)
    return FACTORIES[name](config)
