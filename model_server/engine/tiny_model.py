"""Writes a tiny random-weight Stable Diffusion pipeline directory.

Tests and offline smoke runs load it through the same ``from_pretrained`` path as a real
model. Everything is built locally, tokenizer included (byte-level CLIP BPE over a small
vocabulary), so no network is needed. The shapes follow SD v1 (4 latent channels, VAE scale
factor 8, 77-token context) at a fraction of the width, so pipeline logic is exercised for real
at any image size while a 512x512 image takes well under a second.

Usage: ``python -m model_server.engine.tiny_model DIR``
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from model_server.engine.tiny_tokenizer import MARKER, local_tokenizer

log = logging.getLogger(__name__)


def build_tiny_pipeline(seed: int = 0, in_channels: int = 4, turbo: bool = False):
    """Return an in-memory tiny StableDiffusionPipeline with random weights (``in_channels=9``: an
    inpainting checkpoint's UNet, which also takes the mask and the masked image's latents;
    ``turbo``: shaped like SD-Turbo, an SD 2.1 model: linear attention projections, per-block head
    sizes, GELU text encoder, Euler sampling on trailing timesteps)."""
    import torch
    from diffusers import (AutoencoderKL, EulerDiscreteScheduler, PNDMScheduler, StableDiffusionPipeline,
                           UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    tokenizer = local_tokenizer()
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_attention_heads=4,
            num_hidden_layers=2, max_position_embeddings=77, projection_dim=32,
            hidden_act="gelu" if turbo else "quick_gelu",
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    unet = UNet2DConditionModel(
        sample_size=64, in_channels=in_channels, out_channels=4, layers_per_block=1,
        block_out_channels=(16, 32), norm_num_groups=8, cross_attention_dim=32,
        attention_head_dim=(2, 4) if turbo else 8, use_linear_projection=turbo,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    )
    # Four blocks keep SD's VAE scale factor of 8, so a 512x512 request means a 64x64 latent.
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
        block_out_channels=(8, 8, 16, 16), norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    )
    # SD v1.4's own scheduler configuration; SD-Turbo's.
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
        timestep_spacing="trailing", steps_offset=1,
    ) if turbo else PNDMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        num_train_timesteps=1000, skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1,
    )
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def write_tiny_model(folder: str | Path, seed: int = 0, turbo: bool = False) -> Path:
    """Write the tiny pipeline (SD-Turbo-shaped with ``turbo``) to ``folder`` (safetensors) unless it is
    already there."""
    folder = Path(folder)
    if (folder / MARKER).exists() and (folder / "model_index.json").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    build_tiny_pipeline(seed, turbo=turbo).save_pretrained(folder, safe_serialization=True)
    (folder / MARKER).write_text(json.dumps({"seed": seed, "turbo": turbo}), encoding="utf-8")
    log.info("wrote tiny random-weight pipeline to %s", folder)
    return folder


def write_tiny_lcm_model(folder: str | Path, seed: int = 2) -> Path:
    """The tiny pipeline as an LCM-distilled model is published (LCM_Dreamshaper_v7's layout): a UNet that embeds
    the guidance scale (``time_cond_proj_dim``), the LCM scheduler, saved as a LatentConsistencyModelPipeline."""
    import torch
    from diffusers import LatentConsistencyModelPipeline, LCMScheduler, UNet2DConditionModel

    folder = Path(folder)
    if (folder / MARKER).exists():
        return folder
    pipe = build_tiny_pipeline(seed)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_config(pipe.unet.config, time_cond_proj_dim=16)
    with torch.no_grad():  # a guidance embedding strong enough that another scale shows in the tiny images
        unet.time_embedding.cond_proj.weight.normal_(0.0, 2.0)
    scheduler = LCMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                             num_train_timesteps=1000, set_alpha_to_one=True, steps_offset=1)  # LCM Dreamshaper's
    lcm = LatentConsistencyModelPipeline(
        vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    lcm.save_pretrained(folder, safe_serialization=True)
    (folder / MARKER).write_text(json.dumps({"seed": seed, "lcm": True}), encoding="utf-8")
    return folder


def write_tiny_inpaint_model(folder: str | Path, seed: int = 1) -> Path:
    """A tiny inpainting checkpoint (9-channel UNet) in a published one's layout, written once; its
    text encoder and VAE have the tiny model's shapes, as a real one's have SD v1's."""
    from diffusers import StableDiffusionInpaintPipeline

    folder = Path(folder)
    if (folder / MARKER).exists() and (folder / "model_index.json").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    pipe = build_tiny_pipeline(seed, in_channels=9)
    StableDiffusionInpaintPipeline(**pipe.components).save_pretrained(folder, safe_serialization=True)
    (folder / MARKER).write_text(json.dumps({"seed": seed, "inpainting": True}), encoding="utf-8")
    return folder


# The modules the published LCM-LoRA for SD v1 adapts (latent-consistency/lcm-lora-sdv1-5).
LCM_LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
                    "conv1", "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv",
                    "time_emb_proj"]


def write_random_lcm_lora(unet, folder: str | Path, rank: int = 64, seed: int = 0, std: float = 0.02) -> Path:
    """A random-weight LoRA shaped like LCM-LoRA for ``unet``, in diffusers' LoRA file format.

    Both LoRA matrices are random (not B = 0), so a test can tell the adapter is applied.
    ``unet`` gets the adapter attached; pass one that is thrown away afterwards.
    """
    import torch
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    folder = Path(folder)
    if (folder / "pytorch_lora_weights.safetensors").exists():
        return folder
    torch.manual_seed(seed)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=LCM_LORA_TARGETS))
    state = get_peft_model_state_dict(unet)
    with torch.no_grad():
        for tensor in state.values():
            tensor.normal_(0.0, std)
    folder.mkdir(parents=True, exist_ok=True)
    StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=state, safe_serialization=True)
    return folder


def write_random_taesd(folder: str | Path, tiny: bool = False, seed: int = 0) -> Path:
    """A random-weight tiny VAE (TAESD's architecture; ``tiny`` narrows it for tests)."""
    import torch
    from diffusers import AutoencoderTiny

    folder = Path(folder)
    if (folder / "config.json").exists():
        return folder
    torch.manual_seed(seed)
    # Four blocks keep the scale factor of 8 either way.
    vae = AutoencoderTiny(encoder_block_out_channels=(8,) * 4, decoder_block_out_channels=(8,) * 4,
                          num_encoder_blocks=(1,) * 4, num_decoder_blocks=(1,) * 4) if tiny else AutoencoderTiny()
    vae.save_pretrained(folder, safe_serialization=True)
    return folder


def write_tiny_extras(folder: str | Path, family: str = "sd1", seed: int = 0) -> tuple[Path, Path]:
    """(LCM-LoRA dir, TAESD dir) for the tiny models of ``family`` (SD or SDXL shapes), made once under
    ``folder``."""
    folder = Path(folder)
    lora = folder / "tiny-lcm-lora"
    if not (lora / "pytorch_lora_weights.safetensors").exists():
        from model_server.engine.tiny_sdxl import build_tiny_sdxl

        unet = (build_tiny_sdxl(seed) if family == "sdxl" else build_tiny_pipeline(seed)).unet
        # Strong enough that a test sees the adapter change the image.
        write_random_lcm_lora(unet, lora, rank=4, seed=seed, std=0.3)
    return lora, write_random_taesd(folder / "tiny-taesd", tiny=True, seed=seed)


def write_tiny(name: str, cache_dir: Path) -> Path:
    """The tiny model ``name`` (model_server.families.detect.TINY) under ``cache_dir``, written once."""
    from model_server.engine.tiny_sdxl import write_tiny_sdxl

    writers = {"tiny": lambda: write_tiny_model(cache_dir / "tiny-sd"),
               "tiny-turbo": lambda: write_tiny_model(cache_dir / "tiny-turbo", turbo=True),
               "tiny-sdxl": lambda: write_tiny_sdxl(cache_dir / "tiny-sdxl"),
               "tiny-sdxl-turbo": lambda: write_tiny_sdxl(cache_dir / "tiny-sdxl-turbo", turbo=True)}
    return writers[name]()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m model_server.engine.tiny_model",
                                 description="Writes a tiny random-weight Stable Diffusion pipeline into DIR (for "
                                             "tests and offline demos; its images are noise).")
    ap.add_argument("dir", metavar="DIR", help="the folder to write the model into")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    write_tiny_model(args.dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


# What a typical LoRA trained with kohya's scripts adapts: the UNet's attention and feed-forward layers and
# the text encoder's attention and MLP (bench/models.py's stand-in); the tests' tiny ones adapt attention only.
KOHYA_UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2"]
KOHYA_TE_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]


def write_random_lora(path: str | Path, pipe, rank: int = 4, seed: int = 0, std: float = 0.3,
                      kohya: bool = True, targets: tuple[list[str], list[str]] | None = None) -> Path:
    """A random-weight LoRA for ``pipe``'s UNet and text encoder attentions as one ``.safetensors``
    file: in kohya/A1111 layout (``lora_unet_..._to_q.lora_down.weight``, ``.alpha``: what people
    download) or diffusers' (``unet.....lora_A.weight``). Both matrices are random, so a test sees it.
    ``pipe`` keeps the adapter it was made with: pass one that is thrown away afterwards."""
    import torch
    from peft import LoraConfig, get_peft_model_state_dict
    from safetensors.torch import save_file

    path = Path(path)
    torch.manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    unet_targets, te_targets = targets or (["to_q", "to_k", "to_v", "to_out.0"], ["q_proj", "k_proj", "v_proj",
                                                                                  "out_proj"])
    # SDXL's two text encoders are te1/te2 in kohya's files and text_encoder/text_encoder_2 in diffusers'.
    encoders = ([("te1", "text_encoder", pipe.text_encoder), ("te2", "text_encoder_2", pipe.text_encoder_2)]
                if getattr(pipe, "text_encoder_2", None) is not None else [("te", "text_encoder", pipe.text_encoder)])
    parts = [("unet", "unet", pipe.unet, unet_targets)] + [(p, name, m, te_targets) for p, name, m in encoders]
    for prefix, component, module, names in parts:
        module.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=names), adapter_name="made")
        for key, value in get_peft_model_state_dict(module, adapter_name="made").items():
            value = torch.randn_like(value) * std
            # kohya: down_blocks.0...to_q.lora_A.weight -> lora_unet_down_blocks_0_..._to_q.lora_down.weight
            if kohya:
                module_path, kind = key.rsplit(".lora_", 1)
                if prefix != "unet" and not module_path.startswith("text_model."):
                    module_path = "text_model." + module_path  # how CLIP's modules are named in such files
                base = f"lora_{prefix}_" + module_path.replace(".", "_")
                tensors[f"{base}.{'lora_down' if kind.startswith('A') else 'lora_up'}.weight"] = value.contiguous()
                tensors[f"{base}.alpha"] = torch.tensor(float(rank))
            else:
                tensors[f"{component}.{key}"] = value.contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))
    return path
