"""Step previews: a latent-resolution RGB picture of the image forming, through the family's linear
latent-to-RGB map (families/*.latent_rgb), at about a millisecond per step."""

from __future__ import annotations

import torch
from PIL import Image

from model_server.families import Family


def latent_preview(latents: torch.Tensor, family: Family) -> Image.Image:
    """The first latent of a batch as a PIL image."""
    rgb = torch.einsum("chw,cr->hwr", latents[0].float(), torch.tensor(family.latent_rgb))
    pixels = ((rgb + 1) * 127.5).clamp(0, 255).to(torch.uint8).numpy()
    return Image.fromarray(pixels, "RGB")
