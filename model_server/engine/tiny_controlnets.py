"""Writes tiny random-weight ControlNets matching the tiny models (``tiny``, ``tiny-sdxl``) in a
published ControlNet's diffusers layout, so every control flow is tested offline: made from the tiny
UNet as a ControlNet is made from its base model, read back through the same loader as a downloaded one.

A freshly made ControlNet's output convolutions are zero (training starts there), so its weight could
change nothing; these are filled with random values, so a test sees a unit steer the image.

Usage: ``python -m model_server.engine.tiny_controlnets DIR``
"""

from __future__ import annotations

import argparse
from pathlib import Path

# folder name -> the tiny model family it steers. (Four conditioning widths: three halvings, to the latents' 1/8.)
TINY_CONTROLNETS = {"tiny-controlnet": "sd1", "tiny-sdxl-controlnet": "sdxl"}


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
        net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 8, 16, 16))
        torch.manual_seed(seed + 100 + i)
        with torch.no_grad():
            outputs = [*net.controlnet_down_blocks, net.controlnet_mid_block, net.controlnet_cond_embedding.conv_out]
            for conv in outputs:
                conv.weight.normal_(0.0, 0.3)
                conv.bias.normal_(0.0, 0.1)
        net.save_pretrained(path, safe_serialization=True)
    return written


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path)
    for path in write_tiny_controlnets(ap.parse_args().folder):
        print(path)


if __name__ == "__main__":
    main()
