"""Writes a full-size SD v1.4-shaped pipeline with random weights, for benchmarks.

Same architecture and parameter counts as CompVis/stable-diffusion-v1-4 (UNet 859.5 M, VAE
83.7 M, CLIP text encoder 123.1 M), saved as fp32 safetensors like the hub repository, so load
time, step time and memory match the real model (they do not depend on weight values).
The tokenizer is the small local one from ``model_server.engine.tiny_model``; the text encoder keeps
the real 49,408-token embedding table.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

log = logging.getLogger(__name__)
MARKER = "sd14_random.json"
DEFAULT_DIR = Path.home() / ".cache" / "sd-cpu" / "bench" / "sd14-random"


def build(folder: Path, seed: int = 0) -> Path:
    if (folder / MARKER).exists():
        return folder
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from model_server.engine.tiny_model import local_tokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    tokenizer = local_tokenizer()
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=768, intermediate_size=3072, num_attention_heads=12,
        num_hidden_layers=12, max_position_embeddings=77, projection_dim=768, hidden_act="quick_gelu",
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id))
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              num_train_timesteps=1000, skip_prk_steps=True, set_alpha_to_one=False,
                              steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    counts = {name: sum(p.numel() for p in getattr(pipe, name).parameters())
              for name in ("unet", "vae", "text_encoder")}
    folder.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(folder, safe_serialization=True)
    (folder / MARKER).write_text(json.dumps({"seed": seed, "parameters": counts}), encoding="utf-8")
    log.info("wrote %s: %s", folder, counts)
    return folder


def build_extras(folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """Random-weight stand-ins for the fast preset's parts, next to the model in ``folder``:
    an LCM-LoRA of the published one's shape (rank 64 on the same modules, 67.5 M parameters)
    and a TAESD of the real architecture. Returns (LoRA dir, TAESD dir)."""
    from model_server.engine.tiny_model import write_random_lcm_lora, write_random_taesd

    lora, taesd = folder.parent / f"{folder.name}-lcm-lora", folder.parent / f"{folder.name}-taesd"
    if not (lora / "pytorch_lora_weights.safetensors").exists():
        from diffusers import UNet2DConditionModel

        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet"))
        write_random_lcm_lora(unet, lora, rank=64, seed=seed)
        del unet
    return lora, write_random_taesd(taesd, seed=seed)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_DIR
    build(target)
    print(build_extras(target))
