"""AUTOMATIC1111's "infotext": the generation parameters as text. The model server writes it into
each PNG (the ``parameters`` chunk, read by A1111's PNG Info and other tools) and the gateway's
A1111 API returns it in ``info.infotexts``; one format for both, kept here."""

from __future__ import annotations

from protocol.messages import GenerationParams


# Our scheduler names as A1111 shows them; "default" is SD v1's own sampler, PNDM (A1111's PLMS).
A1111_SAMPLER_NAMES = {"default": "PNDM", "pndm": "PNDM", "ddim": "DDIM", "euler": "Euler", "euler_a": "Euler a",
                       "dpmpp_2m": "DPM++ 2M", "dpmpp_2m_karras": "DPM++ 2M Karras", "unipc": "UniPC", "lcm": "LCM"}


def infotext(params: GenerationParams, seed: int, model: str, sampler: str | None = None,
             lora_hashes: dict[str, str] | None = None) -> str:
    """``sampler`` is the name to show; by default A1111's name for ``params.scheduler``. The LoRAs
    appear as A1111 writes them: their tags in the prompt (so pasting the text back applies them)
    and "Lora hashes"."""
    sampler = sampler or A1111_SAMPLER_NAMES.get(params.scheduler, params.scheduler)
    prompt = " ".join([params.prompt, *(f"<lora:{ref.name}:{ref.weight:g}>" for ref in params.loras)])
    lines = [prompt] + ([f"Negative prompt: {params.negative_prompt}"] if params.negative_prompt else [])
    settings = [f"Steps: {params.steps}", f"Sampler: {sampler}", f"CFG scale: {params.guidance_scale:g}",
                f"Seed: {seed}", f"Size: {params.width}x{params.height}", f"Model: {model}"]
    if params.mode != "txt2img":
        settings.append(f"Denoising strength: {params.strength:g}")
    if params.tiling:
        settings.append("Tiling: True")
    if params.token_merging:
        settings.append(f"Token merging ratio: {params.token_merging:g}")
    if lora_hashes:
        settings.append('Lora hashes: "' + ", ".join(f"{name}: {h}" for name, h in lora_hashes.items()) + '"')
    lines.append(", ".join(settings))
    return "\n".join(lines)
