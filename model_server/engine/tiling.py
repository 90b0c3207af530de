"""Seamless tiling (A1111's ``tiling``): every convolution pads circularly for one image's run.

A convolution that pads with zeros sees an edge; one that pads with the opposite edge's pixels (or
latents) sees the image as if it wrapped around, so the UNet denoises, and the VAE decodes, a
picture whose left edge continues its right one and its top its bottom. Nothing else changes: the
same weights, the same cost. Like DeepCache and token merging this is a context manager around one
image's run, restoring every module on the way out (a cancel included), so it never leaks into the
next job. The OpenVINO UNet is compiled with zero padding, so a tiling job runs torch's; the
OpenVINO VAE decoder steps aside for torch's for the same reason.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch


def _padded_convs(module: torch.nn.Module) -> list[torch.nn.Conv2d]:
    return [m for m in module.modules()
            if isinstance(m, torch.nn.Conv2d) and isinstance(m.padding, tuple) and any(m.padding)]


@contextmanager
def seamless(unet: torch.nn.Module, vae: torch.nn.Module):
    """Circular padding in ``unet`` and ``vae`` (the torch decoder behind an OpenVINO one) while inside."""
    decoder_vae = getattr(vae, "torch_vae", vae)
    convs = _padded_convs(unet) + _padded_convs(decoder_vae)
    modes = [conv.padding_mode for conv in convs]
    stepping_aside = hasattr(vae, "torch_vae")
    try:
        for conv in convs:
            conv.padding_mode = "circular"  # Conv2d pads by its mode, then convolves without padding
        if stepping_aside:
            vae.decode_on_torch = True
        yield
    finally:
        for conv, mode in zip(convs, modes):
            conv.padding_mode = mode
        if stepping_aside:
            vae.decode_on_torch = False
