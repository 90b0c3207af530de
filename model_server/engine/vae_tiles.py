"""The full VAE in overlapping tiles for one job (the plan's ``tiled`` decoder): an image's VAE activations grow
with its pixels (the decoder's last blocks hold 128-256 channels at full resolution), so above a size
(``SD_VAE_TILE_ABOVE``) diffusers' tiled decode and encode run 512-pixel tiles with a blended overlap instead,
bounding the peak whatever the size, for a little more time. Switched on and off around one job, on the
VAE every pipeline object shares, so it never leaks into the next."""

from __future__ import annotations

from contextlib import contextmanager

TILE_PIXELS = 512  # a tile's side in pixels (64 latents): what SD's VAE was trained at


@contextmanager
def decoded_on_torch(vae):
    """The torch VAE decodes while inside, where an OpenVINO decoder would: for an image the hires fix upscales
    in pixels, whose second pass decodes at another size anyway. A compiled decoder keeps its buffers for the
    size it ran (0.39 GiB for 512x512, SD v1.4), which would sit beside the larger pass; torch's are freed."""
    if getattr(vae, "torch_vae", None) is None:
        yield
        return
    vae.decode_on_torch = True
    try:
        yield
    finally:
        vae.decode_on_torch = False


@contextmanager
def vae_tiles(vae, on: bool):
    """Tiled decode and encode in ``vae`` (diffusers' AutoencoderKL) while inside, when ``on``. An OpenVINO
    decoder (openvino_vae) steps aside for its torch VAE: compiled whole for a large image, its activations
    would stay allocated at that size."""
    torch_vae = getattr(vae, "torch_vae", vae)
    if on and torch_vae is None and hasattr(vae, "tile"):  # no torch VAE (an OpenVINO IR model): its own tiles
        vae.tile = TILE_PIXELS
        try:
            yield
        finally:
            vae.tile = 0
        return
    if not on or not hasattr(torch_vae, "enable_tiling"):
        yield
        return
    sizes = (torch_vae.tile_sample_min_size, torch_vae.tile_latent_min_size)
    scale = 2 ** (len(torch_vae.config.block_out_channels) - 1)
    torch_vae.tile_sample_min_size, torch_vae.tile_latent_min_size = TILE_PIXELS, TILE_PIXELS // scale
    torch_vae.enable_tiling()
    stepping_aside = torch_vae is not vae
    if stepping_aside:
        vae.decode_on_torch = True
    try:
        yield
    finally:
        torch_vae.disable_tiling()
        torch_vae.tile_sample_min_size, torch_vae.tile_latent_min_size = sizes
        if stepping_aside:
            vae.decode_on_torch = False
