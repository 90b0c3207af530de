"""AUTOMATIC1111's "infotext": the generation parameters as text. The model server writes it into
each PNG (the ``parameters`` chunk, read by A1111's PNG Info and other tools) and the gateway's
A1111 API returns it in ``info.infotexts``; one format for both, kept here."""

from __future__ import annotations

from protocol.messages import GenerationParams


def infotext(params: GenerationParams, seed: int, sampler: str, model: str) -> str:
    """``sampler`` is the name to show (A1111's name where the caller has one, else ours)."""
    lines = [params.prompt] + ([f"Negative prompt: {params.negative_prompt}"] if params.negative_prompt else [])
    settings = [f"Steps: {params.steps}", f"Sampler: {sampler}", f"CFG scale: {params.guidance_scale:g}",
                f"Seed: {seed}", f"Size: {params.width}x{params.height}", f"Model: {model}"]
    if params.token_merging:
        settings.append(f"Token merging ratio: {params.token_merging:g}")
    lines.append(", ".join(settings))
    return "\n".join(lines)
