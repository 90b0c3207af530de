"""Named speed/quality presets: what each means, shared by the gateway and the model server.

The gateway turns a preset into default steps, guidance and sampler (a request's own values
win); the model server turns it into pipeline parts: the LCM-LoRA adapter and the tiny VAE
decoder (TAESD). ``turbo`` runs only on a one-step model (the model list says which). Measured
costs are in docs/performance.md.
"""

from __future__ import annotations

import msgspec


class Preset(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    summary: str
    steps: int
    guidance_scale: float
    scheduler: str
    lcm_lora: bool = False  # needs the LCM-LoRA adapter (few-step sampling without guidance)
    tiny_vae: bool = False  # decode with the tiny VAE (TAESD) when one is loaded
    deep_cache: int = 0  # run the UNet in full every Nth step only (DeepCache); 0 = every step
    token_merging: float = 0.0  # share of tokens merged in the largest self-attentions (ToMe); 0 = off
    one_step: bool = False  # only for models distilled to a few steps without guidance (SD-Turbo, SDXS)


PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset(name="quality", steps=25, guidance_scale=7.5, scheduler="default",
           summary="The model's own sampler, 25 steps, full VAE: the reference image."),
    Preset(name="balanced", steps=20, guidance_scale=7.5, scheduler="dpmpp_2m_karras", deep_cache=3,
           summary=("DPM++ 2M Karras in 20 steps instead of 25; where the UNet runs on torch, in full every 3rd "
                    "step and its shallow layers only in between (DeepCache): about 0.8x the time of 'quality' on "
                    "OpenVINO, about half on torch; slightly less detail.")),
    Preset(name="fast", steps=4, guidance_scale=1.0, scheduler="lcm", lcm_lora=True, tiny_vae=True,
           summary=("LCM-LoRA in 4 steps without classifier-free guidance (half the work per step) "
                    "and the tiny TAESD decoder: seconds instead of minutes; softer detail, "
                    "less prompt adherence, negative prompts ignored.")),
    Preset(name="turbo", steps=1, guidance_scale=0.0, scheduler="default", tiny_vae=True, one_step=True,
           summary=("For one-step models (SD-Turbo, SDXS) only: 1 step (up to 4 helps detail) without guidance, "
                    "the model's sampler on its last timestep, and the tiny decoder; a request naming such a "
                    "model gets it by default. Negative prompts are ignored.")),
)}
PRESET_NAMES = tuple(PRESETS)
