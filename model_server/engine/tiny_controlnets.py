"""Writes tiny random-weight ControlNets matching the tiny models (``tiny``, ``tiny-sdxl``) in a
published ControlNet's diffusers layout, and a tiny IP-Adapter for ``tiny`` in h94/IP-Adapter's (its
``.safetensors`` beside an ``image_encoder`` folder), so every control flow is tested offline: made from
the tiny UNet as a ControlNet is made from its base model, read back through the same loaders as
downloaded ones.

A freshly made ControlNet's output convolutions are zero (training starts there), so its weight could
change nothing; these are filled with random values, so a test sees a unit steer the image.

Usage: ``python -m model_server.engine.tiny_controlnets DIR``
"""

from __future__ import annotations

import argparse
from pathlib import Path

# folder name -> the tiny model family it steers
TINY_CONTROLNETS = {"tiny-controlnet": "sd1", "tiny-sdxl-controlnet": "sdxl"}
# The SD 1.x one again as a single file (diffusers' keys in one .safetensors, as some are shared), beside them.
TINY_SINGLE_FILE = "tiny-controlnet-single.safetensors"


def write_tiny_controlnets(folder: Path, seed: int = 0, names: tuple[str, ...] | None = None) -> list[Path]:
    """Write the tiny ControlNets (``names``: some of them) into ``folder``, each once; their folders."""
    import torch
    from diffusers import ControlNetModel

    from model_server.engine.tiny_model import build_tiny_pipeline
    from model_server.engine.tiny_sdxl import build_tiny_sdxl

    written = []
    for i, name in enumerate(names or TINY_CONTROLNETS):
        path = Path(folder) / name
        written.append(path)
        if (path / "config.json").exists():
            continue
        family = TINY_CONTROLNETS[name]
        unet = (build_tiny_sdxl(seed) if family == "sdxl" else build_tiny_pipeline(seed)).unet
        net = ControlNetModel.from_unet(unet)  # its conditioning layers as a published one's
        torch.manual_seed(seed + 100 + i)
        with torch.no_grad():
            outputs = [*net.controlnet_down_blocks, net.controlnet_mid_block, net.controlnet_cond_embedding.conv_out]
            for conv in outputs:
                conv.weight.normal_(0.0, 0.3)
                conv.bias.normal_(0.0, 0.1)
        net.save_pretrained(path, safe_serialization=True)
        if name == "tiny-controlnet":
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(Path(folder) / TINY_SINGLE_FILE))
    return written


TINY_IP_ADAPTER = "ip-adapter_tiny"  # for tiny: SD 1.x's layout, 4 image tokens (ImageProjection)
TINY_SDXL_IP_ADAPTER = "ip-adapter_tiny_sdxl"  # the same for tiny-sdxl (its 80-wide text, both encoders')
# ip-adapter-plus' layout for tiny: a Resampler reading the encoder's hidden states into 4 tokens
TINY_PLUS_IP_ADAPTER = "ip-adapter-plus_tiny"


def write_tiny_ip_adapter(folder: Path, seed: int = 0, family: str = "sd1", plus: bool = False) -> Path:
    """The tiny IP-Adapter's file for ``family`` (sd1: ``ip-adapter-tiny/``, sdxl: ``ip-adapter-tiny-sdxl/``; ``plus``:
    ``ip-adapter-plus-tiny/``, each with ``image_encoder/``), written once."""
    import torch
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from model_server.engine.tiny_model import build_tiny_pipeline
    from model_server.engine.tiny_sdxl import build_tiny_sdxl

    name = TINY_PLUS_IP_ADAPTER if plus else TINY_SDXL_IP_ADAPTER if family == "sdxl" else TINY_IP_ADAPTER
    path = Path(folder) / name.replace("_", "-") / f"{name}.safetensors"
    if path.exists():
        return path
    torch.manual_seed(seed + 200)
    embed, hidden = 16, 32
    encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=hidden, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, image_size=32,
        patch_size=8, projection_dim=embed))
    encoder.save_pretrained(path.parent / "image_encoder", safe_serialization=True)
    unet = (build_tiny_sdxl(seed) if family == "sdxl" else build_tiny_pipeline(seed)).unet
    cross = unet.config.cross_attention_dim
    tokens = 4
    if plus:
        state = _plus_projection(hidden, cross, tokens)
    else:
        state = {"image_proj.proj.weight": torch.randn(cross * tokens, embed) * 0.5,
                 "image_proj.proj.bias": torch.zeros(cross * tokens),
                 "image_proj.norm.weight": torch.ones(cross), "image_proj.norm.bias": torch.zeros(cross)}
    key = 1  # diffusers numbers the cross-attention processors 1, 3, 5, ... in the UNet's order
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        width = unet.get_submodule(name.removesuffix(".processor")).to_k.out_features
        state[f"ip_adapter.{key}.to_k_ip.weight"] = torch.randn(width, cross) * 0.5
        state[f"ip_adapter.{key}.to_v_ip.weight"] = torch.randn(width, cross) * 0.5
        key += 2
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def _plus_projection(embed: int, cross: int, tokens: int) -> dict:
    """ip-adapter-plus' image projection (diffusers' IPAdapterPlusImageProjection, 4 layers, one 64-wide head) in
    h94's tensor names, which diffusers' loader maps back: each layer's attention and feed-forward."""
    import torch
    from diffusers.models.embeddings import IPAdapterPlusImageProjection

    projection = IPAdapterPlusImageProjection(embed_dims=embed, output_dims=cross, hidden_dims=32, heads=1,
                                              num_queries=tokens)
    state = {}
    for key, value in projection.state_dict().items():
        parts = key.split(".")
        if parts[0] != "layers":
            state[key] = value
            continue
        layer, rest = parts[1], ".".join(parts[2:])
        renamed = {"ln0": "0.norm1", "ln1": "0.norm2", "attn.to_q": "0.to_q", "attn.to_out.0": "0.to_out",
                   "ff.0": "1.0", "ff.1.net.0.proj": "1.1", "ff.1.net.2": "1.3"}
        for ours, theirs in renamed.items():
            if rest.startswith(ours + "."):
                state[f"layers.{layer}.{theirs}{rest[len(ours):]}"] = value
        if rest == "attn.to_k.weight":  # h94 keeps keys and values in one matrix
            state[f"layers.{layer}.0.to_kv.weight"] = torch.cat([value, projection.state_dict()[
                f"layers.{layer}.attn.to_v.weight"]])
    return {f"image_proj.{key}": value * 0.5 if key.endswith("weight") else value for key, value in state.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path)
    folder = ap.parse_args().folder
    for path in [*write_tiny_controlnets(folder), write_tiny_ip_adapter(folder),
                 write_tiny_ip_adapter(folder, family="sdxl"), write_tiny_ip_adapter(folder, plus=True)]:
        print(path)


if __name__ == "__main__":
    main()
