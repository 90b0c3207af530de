"""AUTOMATIC1111's "infotext": the generation parameters as text. The model server writes it into
each PNG (the ``parameters`` chunk, read by A1111's PNG Info and other tools) and the gateway's
A1111 API returns it in ``info.infotexts``; one format for both, kept here."""

from __future__ import annotations

from protocol.messages import GenerationParams


# Our scheduler names as A1111 shows them; "default" is SD v1's own sampler, PNDM (A1111's PLMS).
A1111_SAMPLER_NAMES = {"default": "PNDM", "pndm": "PNDM", "ddim": "DDIM", "euler": "Euler", "euler_a": "Euler a",
                       "dpmpp_2m": "DPM++ 2M", "dpmpp_2m_karras": "DPM++ 2M Karras", "unipc": "UniPC", "lcm": "LCM"}


def infotext(params: GenerationParams, seed: int, model: str, sampler: str | None = None) -> str:
    """``sampler`` is the name to show; by default A1111's name for ``params.scheduler``."""
    sampler = sampler or A1111_SAMPLER_NAMES.get(params.scheduler, params.scheduler)
    lines = [params.prompt] + ([f"Negative prompt: {params.negative_prompt}"] if params.negative_prompt else [])
    settings = [f"Steps: {params.steps}", f"Sampler: {sampler}", f"CFG scale: {params.guidance_scale:g}",
                f"Seed: {seed}", f"Size: {params.width}x{params.height}", f"Model: {model}"]
    if params.mode != "txt2img":
        settings.append(f"Denoising strength: {params.strength:g}")
    if params.token_merging:
        settings.append(f"Token merging ratio: {params.token_merging:g}")
    lines.append(", ".join(settings))
    return "\n".join(lines)
