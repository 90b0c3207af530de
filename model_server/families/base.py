"""The shape of a family's facts (see the package's docstring) and the size rules every family shares."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Family:
    """One architecture: what it needs and what it was trained for."""

    name: str  # "sd1", "sd2", "sdxl": what /v1/models and the job's plan say
    title: str
    text_encoders: tuple[str, ...]  # the pipeline's component names, released after the prompt is encoded
    conditioning: str  # what the UNet is conditioned on, for people (docs, /health)
    # Trained sizes (width, height) at the family's native scale, the square first; a one-step model of the
    # family (SDXL-Turbo) was distilled at ``one_step_size`` and its sizes scale down with it.
    trained_sizes: tuple[tuple[int, int], ...]
    one_step_size: int
    pipelines: dict[str, str]  # mode (txt2img, img2img, inpaint) -> diffusers class name
    control_pipelines: dict[str, str]  # the same modes with ControlNet units
    lcm_lora: str  # the hub's LCM-LoRA for the fast preset
    tiny_vae: str  # the hub's TAESD-class decoder (previews and the fast presets)
    # A linear map from the 4 latent channels to RGB (the VAE decoder's cheap approximation, ~1 ms per step).
    latent_rgb: tuple[tuple[float, float, float], ...]
    # A full-size model of the family loaded on the bench machine (bf16, OpenVINO; docs/performance.md): what
    # the memory budget expects of one this server has not loaded yet (model_server.jobs.footprint).
    resident_bytes: int
    weights_bytes: int  # its UNet, VAE and text encoders' parameters in bf16 (the priors above are for this size)

    @property
    def native_size(self) -> int:
        return self.trained_sizes[0][0]

    def default_size(self, one_step: bool, fallback: int) -> int:
        """The side of a request that gives no size; ``fallback`` (DEFAULT_SIZE) where the family
        trained at 512, so an operator's smaller default still holds for SD 1.x."""
        side = self.one_step_size if one_step else self.native_size
        return fallback if side == 512 else side

    def sizes(self, one_step: bool) -> list[tuple[int, int]]:
        """The trained sizes for a model of this family (one-step models' scaled, multiples of 64)."""
        scale = (self.one_step_size if one_step else self.native_size) / self.native_size
        return list(dict.fromkeys((_round64(w * scale), _round64(h * scale)) for w, h in self.trained_sizes))


def _round64(value: float) -> int:
    return max(64, int(round(value / 64)) * 64)

