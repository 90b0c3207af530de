"""The dedicated inpainting checkpoint, when one is configured (``SD_INPAINT_MODEL``).

With the base model, inpainting blends the kept parts' latents back in after every step: it
works with any model, but the repainted region sees its surroundings only through that blending
(seams, context ignored). An inpainting checkpoint (e.g. stable-diffusion-inpainting) has a UNet
with 9 input channels (the latents, the mask and the masked image's latents), trained to fill a
hole. Only that UNet is loaded: SD v1 inpainting checkpoints share the base model's text encoder
and VAE, so the loaded ones serve, which saves their memory (about 0.3 GB in bf16) and load time.

It loads on the first inpaint job, not at start: 1.7 GB in bf16 that a server nobody inpaints on
never needs, from a bf16 copy made once like the base model's. A checkpoint that is missing or
fails to load is logged and reported in /health, and inpainting goes on with the base model.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import torch
from diffusers import UNet2DConditionModel

from model_server.engine import preset_parts
from model_server.engine.preset_parts import fetch_from_hub
from model_server.settings import ModelServerSettings

INPAINT_CHANNELS = 9  # 4 latent + 1 mask + 4 masked-image latent channels
UNET_FILES = ["unet/config.json", "unet/diffusion_pytorch_model.safetensors"]  # what is used of a hub checkpoint


def resolve(settings: ModelServerSettings) -> tuple[str | None, str]:
    """(where the checkpoint is, or None; why it cannot be used, or ""), checked without loading."""
    value = settings.inpaint_model
    if preset_parts.switched_off(value):
        return None, "SD_INPAINT_MODEL is not set"
    if value == "tiny":
        from model_server.engine.tiny_model import write_tiny_inpaint_model

        return str(write_tiny_inpaint_model(Path(settings.cache_dir) / "tiny-inpaint")), ""
    return value, preset_parts.missing(value, "unet/config.json")


def load_unet(source: str, settings: ModelServerSettings, dtype: torch.dtype,
              bf16_copy: Callable[..., tuple[str, dict]]) -> tuple[UNet2DConditionModel, dict, Path | None]:
    """The checkpoint's UNet in ``dtype``, how its weights were read and the local folder they were
    read from (if any); raises if it cannot load or is not an inpainting UNet. ``bf16_copy`` makes
    or finds the cached bf16 copy."""
    # SD_MODEL_REVISION names a revision of the base model, not of this one.
    settings = dataclasses.replace(settings, revision=None)
    weights = {"weights": "as stored"}
    fetch_from_hub(source, settings, UNET_FILES)
    if dtype == torch.bfloat16 and settings.bf16_cache:
        source, weights = bf16_copy(source, settings, unet_only=True)
    unet = UNet2DConditionModel.from_pretrained(source, subfolder="unet", dtype=dtype, low_cpu_mem_usage=True,
                                                token=settings.token)
    channels = unet.config.in_channels
    if channels != INPAINT_CHANNELS:
        raise ValueError(f"its UNet takes {channels} input channels, not {INPAINT_CHANNELS}: "
                         "not an inpainting checkpoint")
    folder = Path(source) / "unet"
    return unet.eval(), weights, folder if folder.is_dir() else None
