"""Writes a full-size random-weight SDXL 1.0 base stand-in for benchmarks (SDXL-Turbo has the same UNet,
run on trailing timesteps at 512²), and random stand-ins of TAESDXL.

Same architecture and parameter counts as stabilityai/stable-diffusion-xl-base-1.0 (UNet 2,567 M with
its text_time added conditioning; CLIP ViT-L 123 M and OpenCLIP ViT-bigG 695 M text encoders; the VAE
83.7 M), saved as fp32 safetensors like the hub repository, so load time, step time and memory match
the real model (they do not depend on weight values). The tokenizers are the small local one; the text
encoders keep the real 49,408-token embedding tables.

    python -m bench.sdxl_model [DIR]
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from bench.sd14_model import DEFAULT_DIR

log = logging.getLogger(__name__)
MARKER = "sdxl_random.json"
SDXL_DIR = DEFAULT_DIR.parent / "sdxl-random"


def build(folder: Path = SDXL_DIR, seed: int = 0) -> Path:
    if (folder / MARKER).exists():
        return folder
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from model_server.engine.tiny_tokenizer import local_tokenizer

    torch.manual_seed(seed)
    tokenizer = local_tokenizer()
    ids = dict(vocab_size=49408, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
               eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    text_encoder = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                                                num_hidden_layers=12, projection_dim=768, hidden_act="quick_gelu",
                                                **ids))
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(
        hidden_size=1280, intermediate_size=5120, num_attention_heads=20, num_hidden_layers=32, projection_dim=1280,
        hidden_act="gelu", **ids))
    unet = UNet2DConditionModel(
        sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), use_linear_projection=True,
        cross_attention_dim=2048, addition_embed_type="text_time", addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=1024,
                        block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, scaling_factor=0.13025, force_upcast=True)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       num_train_timesteps=1000, steps_offset=1, timestep_spacing="leading")
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                     tokenizer=tokenizer, tokenizer_2=local_tokenizer(), unet=unet,
                                     scheduler=scheduler)
    counts = {name: sum(p.numel() for p in getattr(pipe, name).parameters())
              for name in ("unet", "vae", "text_encoder", "text_encoder_2")}
    folder.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(folder, safe_serialization=True)
    (folder / MARKER).write_text(json.dumps({"seed": seed, "parameters": counts, "shape": "sdxl-base-1.0"}),
                                 encoding="utf-8")
    log.info("wrote %s: %s", folder, counts)
    return folder


def build_taesdxl(folder: Path = SDXL_DIR.parent / "sdxl-random-taesd", seed: int = 0) -> Path:
    """TAESDXL's architecture (TAESD's, with SDXL's latent scale), random weights."""
    from model_server.engine.tiny_model import write_random_taesd

    return write_random_taesd(folder, seed=seed)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(prog="python -m bench.sdxl_model", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir", nargs="?", type=Path, default=SDXL_DIR, help=f"where to write (default {SDXL_DIR})")
    logging.basicConfig(level=logging.INFO)
    print(build(ap.parse_args().dir), build_taesdxl())
