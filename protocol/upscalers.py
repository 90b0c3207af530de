"""The upscalers every server has, by the names A1111 gives them, shared by the gateway and the model server.

Model upscalers (ESRGAN, Real-ESRGAN, SwinIR, ...) are files in UPSCALER_DIR, listed by the model server
(``UpscalerEntry``). Those here need no file: the pixel resamplers, and the latent ones the hires fix
uses (the latents resized before the second pass, as A1111's "Latent" upscalers do).
"""

from __future__ import annotations

# name -> PIL's resampling filter
PIXEL_UPSCALERS = {"None": "", "Lanczos": "LANCZOS", "Nearest": "NEAREST"}
# name -> (torch.nn.functional.interpolate mode, antialias); A1111's "Latent" is bilinear
LATENT_UPSCALERS = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}
DEFAULT_UPSCALER = "Lanczos"  # an upscale job that names none
DEFAULT_HIRES_UPSCALER = "Latent"
