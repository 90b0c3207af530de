"""Tiny random-weight SDXL pipelines (``tiny-sdxl``, ``tiny-sdxl-turbo``) for tests and offline runs:
the exact pipeline classes and SDXL's structure (two text encoders, the second with a projection for
the pooled embedding; a UNet with ``text_time`` added conditioning and deeper transformer stacks in
its lower block; the SDXL VAE's scaling factor), at a fraction of the width, with the tokenizer
built locally (tiny_model.local_tokenizer). SDXL-Turbo's: Euler on trailing timesteps, 512² default.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from model_server.engine.tiny_tokenizer import MARKER, local_tokenizer

log = logging.getLogger(__name__)

TIME_EMBED_DIM = 8  # per micro-conditioning number; SDXL passes six (original size, crop, target size)


def build_tiny_sdxl(seed: int = 0, turbo: bool = False, in_channels: int = 4):
    """An in-memory tiny StableDiffusionXLPipeline (SDXL-Turbo-shaped with ``turbo``; ``in_channels=9``:
    an inpainting UNet)."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    tokenizer = local_tokenizer()

    def text_config(hidden: int, act: str) -> CLIPTextConfig:
        return CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=37,
                              num_attention_heads=4, num_hidden_layers=2, max_position_embeddings=77,
                              projection_dim=32, hidden_act=act, bos_token_id=tokenizer.bos_token_id,
                              eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)

    text_encoder = CLIPTextModel(text_config(32, "quick_gelu"))  # CLIP ViT-L's activation
    # OpenCLIP bigG's activation and projection; wider than the first, as in SDXL (single-file loading tells the
    # two apart by their width).
    text_encoder_2 = CLIPTextModelWithProjection(text_config(48, "gelu"))
    unet = UNet2DConditionModel(
        sample_size=64 if turbo else 128, in_channels=in_channels, out_channels=4, layers_per_block=1,
        block_out_channels=(16, 32), norm_num_groups=8, cross_attention_dim=32 + 48,  # both encoders' hidden states
        attention_head_dim=(2, 4), use_linear_projection=True, transformer_layers_per_block=(1, 2),
        addition_embed_type="text_time", addition_time_embed_dim=TIME_EMBED_DIM,
        projection_class_embeddings_input_dim=6 * TIME_EMBED_DIM + 32,  # six size/crop numbers + the pooled text
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, block_out_channels=(8, 8, 16, 16),
        norm_num_groups=8, down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        scaling_factor=0.13025, force_upcast=False,
    )
    # SDXL 1.0's scheduler configuration; SDXL-Turbo's samples from the last timestep.
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       num_train_timesteps=1000, steps_offset=1,
                                       timestep_spacing="trailing" if turbo else "leading")
    return StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                     tokenizer=tokenizer, tokenizer_2=local_tokenizer(), unet=unet,
                                     scheduler=scheduler, force_zeros_for_empty_prompt=not turbo)


def write_tiny_sdxl(folder: str | Path, seed: int = 0, turbo: bool = False) -> Path:
    """Write the tiny SDXL pipeline to ``folder`` (safetensors) unless it is already there."""
    folder = Path(folder)
    if (folder / MARKER).exists() and (folder / "model_index.json").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    build_tiny_sdxl(seed, turbo=turbo).save_pretrained(folder, safe_serialization=True)
    (folder / MARKER).write_text(json.dumps({"seed": seed, "turbo": turbo, "family": "sdxl"}), encoding="utf-8")
    log.info("wrote tiny random-weight SDXL pipeline to %s", folder)
    return folder
