"""Writes full-size random-weight stand-ins for benchmarks: SD v1.4-shaped, and SD-Turbo-shaped.

Same architecture and parameter counts as CompVis/stable-diffusion-v1-4 (UNet 859.5 M, VAE
83.7 M, CLIP text encoder 123.1 M), saved as fp32 safetensors like the hub repository, so load
time, step time and memory match the real model (they do not depend on weight values).
The tokenizer is the small local one from ``model_server.engine.tiny_model``; the text encoder keeps
the real 49,408-token embedding table.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)
MARKER = "sd14_random.json"
DEFAULT_DIR = Path.home() / ".cache" / "sd-cpu" / "bench" / "sd14-random"


def build(folder: Path, seed: int = 0) -> Path:
    """SD v1.4's architecture: the UNet with 8-wide heads and 768-wide cross-attention, CLIP ViT-L/14's
    text tower, PNDM."""
    from diffusers import PNDMScheduler

    return _write(folder, seed, "sd-v1.4", unet={"cross_attention_dim": 768, "attention_head_dim": 8},
                  text={"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12,
                        "num_hidden_layers": 12, "projection_dim": 768, "hidden_act": "quick_gelu"},
                  scheduler=lambda: PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                                  num_train_timesteps=1000, skip_prk_steps=True,
                                                  set_alpha_to_one=False, steps_offset=1))


def _write(folder: Path, seed: int, shape: str, unet: dict, text: dict, scheduler) -> Path:
    """A random-weight SD pipeline of SD's UNet layout and VAE, with ``unet`` and ``text`` (CLIP config)
    settings of its own, saved as fp32 safetensors like a hub repository (once)."""
    if (folder / MARKER).exists():
        return folder
    import torch
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from model_server.engine.tiny_tokenizer import local_tokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, **unet)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    tokenizer = local_tokenizer()
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **text))
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler(), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    counts = {name: sum(p.numel() for p in getattr(pipe, name).parameters())
              for name in ("unet", "vae", "text_encoder")}
    folder.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(folder, safe_serialization=True)
    (folder / MARKER).write_text(json.dumps({"seed": seed, "parameters": counts, "shape": shape}), encoding="utf-8")
    log.info("wrote %s (%s): %s", folder, shape, counts)
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


TURBO_DIR = DEFAULT_DIR.parent / "sd-turbo-random"


def build_sd_turbo(folder: Path = TURBO_DIR, seed: int = 0) -> Path:
    """A full-size SD-Turbo-shaped pipeline with random weights: SD 2.1-base's UNet (per-block head
    sizes, linear attention projections, 1024-wide cross-attention), the OpenCLIP ViT-H text tower as
    diffusers ships it (23 layers, GELU) and SD's VAE; Euler on trailing timesteps, as sd-turbo's own
    scheduler config says. The folder's name marks it a one-step model for the catalog."""
    from diffusers import EulerDiscreteScheduler

    return _write(folder, seed, "sd-turbo", unet={"cross_attention_dim": 1024, "attention_head_dim": (5, 10, 20, 20),
                                                  "use_linear_projection": True},
                  text={"hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 16,
                        "num_hidden_layers": 23, "projection_dim": 512, "hidden_act": "gelu"},
                  scheduler=lambda: EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012,
                                                           beta_schedule="scaled_linear", num_train_timesteps=1000,
                                                           timestep_spacing="trailing", steps_offset=1))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(prog="python -m bench.sd14_model", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir", nargs="?", type=Path, default=DEFAULT_DIR, help=f"where to write (default {DEFAULT_DIR})")
    target = ap.parse_args().dir
    logging.basicConfig(level=logging.INFO)
    build(target)
    print(build_extras(target))
