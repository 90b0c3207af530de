"""Seamless tiling (model_server/engine/tiling.py) on the tiny model's real UNet and VAE."""

from __future__ import annotations

import torch

from model_server.engine.tiling import seamless
from model_server.engine.tiny_model import build_tiny_pipeline


def _unet_out(pipe, latents):
    text = torch.zeros(1, 77, 32)
    return pipe.unet(latents, 10, encoder_hidden_states=text).sample


def test_with_tiling_the_unet_sees_a_wrapped_image_and_the_vae_decodes_one():
    pipe = build_tiny_pipeline()
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    shifted = torch.roll(latents, shifts=(4, 8), dims=(-2, -1))  # whole steps of the UNet's one downsampling
    with torch.inference_mode():
        with seamless(pipe.unet, pipe.vae):
            # Circular padding makes every layer commute with a wrap-around shift: the image has no edge.
            assert torch.allclose(torch.roll(_unet_out(pipe, latents), (4, 8), (-2, -1)), _unet_out(pipe, shifted),
                                  atol=1e-5)
            decoded = pipe.vae.decode(latents).sample
            assert torch.allclose(torch.roll(decoded, (32, 64), (-2, -1)), pipe.vae.decode(shifted).sample,
                                  atol=1e-4)
        # Outside, zero padding again: the edges differ, and nothing leaked into the next job.
        assert not torch.allclose(torch.roll(_unet_out(pipe, latents), (4, 8), (-2, -1)), _unet_out(pipe, shifted),
                                  atol=1e-3)
    assert all(m.padding_mode == "zeros" for m in pipe.unet.modules() if isinstance(m, torch.nn.Conv2d))


def test_tiling_restores_the_padding_when_the_job_is_cancelled():
    pipe = build_tiny_pipeline()
    try:
        with seamless(pipe.unet, pipe.vae):
            raise KeyboardInterrupt  # as a cancel raises out of the denoising loop
    except KeyboardInterrupt:
        pass
    convs = [m for part in (pipe.unet, pipe.vae) for m in part.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(m.padding_mode == "zeros" for m in convs)
