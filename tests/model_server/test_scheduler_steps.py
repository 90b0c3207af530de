"""Every sampler runs every step count the contract lets through (so no job can fail mid-way)."""

from __future__ import annotations

import pytest
import torch
from diffusers import PNDMScheduler

from model_server.engine.schedulers import FACTORIES
from model_server.pipeline import max_steps
from protocol.messages import MAX_STEPS, SCHEDULERS

# SD v1.x's own scheduler configuration (what "default" and every sampler is built from).
_SD_CONFIG = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True,
                           steps_offset=1, set_alpha_to_one=False, num_train_timesteps=1000).config
_FACTORIES = {"default": PNDMScheduler.from_config, **FACTORIES}


@pytest.mark.parametrize("name", SCHEDULERS)
def test_each_sampler_runs_from_one_step_to_its_maximum(name):
    most = max_steps(name)
    assert most <= MAX_STEPS
    for steps in sorted({1, 2, 3, 4, 7, 25, most - 1, most}):
        scheduler = _FACTORIES[name](_SD_CONFIG)
        scheduler.set_timesteps(steps)
        sample = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(steps))
        for t in scheduler.timesteps:
            sample = scheduler.step(torch.randn_like(sample), t, scheduler.scale_model_input(sample, t)).prev_sample
        assert torch.isfinite(sample).all(), (name, steps)


def test_lcm_beyond_its_schedule_fails_which_is_why_submit_refuses_it():
    scheduler = _FACTORIES["lcm"](_SD_CONFIG)
    with pytest.raises(ValueError):
        scheduler.set_timesteps(max_steps("lcm") + 1)
