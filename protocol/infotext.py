"""AUTOMATIC1111's "infotext": the generation parameters as text. The model server writes it into
each PNG (the ``parameters`` chunk, read by A1111's PNG Info and other tools) and the gateway's
A1111 API returns it in ``info.infotexts``; one format for both, kept here."""

from __future__ import annotations

from protocol.control import CONTROL_MODE_NAMES, RESIZE_MODE_NAMES, module_named, threshold
from protocol.messages import GenerationParams
from protocol.upscalers import DEFAULT_UPSCALER


# Our scheduler names as A1111 shows them; "default" is SD v1's own sampler, PNDM (A1111's PLMS).
A1111_SAMPLER_NAMES = {"default": "PNDM", "pndm": "PNDM", "ddim": "DDIM", "euler": "Euler", "euler_a": "Euler a",
                       "dpmpp_2m": "DPM++ 2M", "dpmpp_2m_karras": "DPM++ 2M Karras", "unipc": "UniPC", "lcm": "LCM"}


def infotext(params: GenerationParams, seed: int, model: str, sampler: str | None = None,
             lora_hashes: dict[str, str] | None = None) -> str:
    """``sampler`` is the name to show; by default A1111's name for ``params.scheduler``. The LoRAs
    appear as A1111 writes them: their tags in the prompt (so pasting the text back applies them)
    and "Lora hashes"."""
    if params.mode == "upscale":  # A1111's extras tab writes only its own part
        upscaler = params.upscaler or DEFAULT_UPSCALER
        by = (f"Postprocess upscale by: {params.upscale:g}" if params.upscale
              else f"Postprocess upscale to: {params.upscale_width}x{params.upscale_height}, "
                   "Postprocess crop to fit: True")
        second = ([f"Postprocess upscaler 2: {params.upscaler_2}",
                   f"Postprocess upscaler 2 visibility: {params.upscaler_2_visibility:g}"]
                  if params.upscaler_2 and params.upscaler_2_visibility else [])
        return ", ".join([f"{by}, Postprocess upscaler: {upscaler}", *second, *_faces(params)])
    if params.mode == "detect":
        return f"Preprocessor: {params.controls[0].module if params.controls else 'none'}"
    sampler = sampler or A1111_SAMPLER_NAMES.get(params.scheduler, params.scheduler)
    prompt = " ".join([params.prompt, *(f"<lora:{ref.name}:{ref.weight:g}>" for ref in params.loras)])
    lines = [prompt] + ([f"Negative prompt: {params.negative_prompt}"] if params.negative_prompt else [])
    settings = [f"Steps: {params.steps}", f"Sampler: {sampler}", f"CFG scale: {params.guidance_scale:g}",
                f"Seed: {seed}", f"Size: {params.width}x{params.height}", f"Model: {model}"]
    if params.mode != "txt2img":
        settings.append(f"Denoising strength: {params.strength:g}")
    if params.hires is not None:
        h = params.hires
        settings += [f"Denoising strength: {h.strength:g}",
                     f"Hires resize: {h.width}x{h.height}" if h.width and h.height else f"Hires upscale: {h.scale:g}",
                     f"Hires steps: {h.steps}", f"Hires upscaler: {h.upscaler}"]
        if h.prompt:
            settings.append(f'Hires prompt: "{h.prompt}"')
        if h.negative_prompt:
            settings.append(f'Hires negative prompt: "{h.negative_prompt}"')
    settings += _faces(params)
    if params.tiling:
        settings.append("Tiling: True")
    if params.token_merging:
        settings.append(f"Token merging ratio: {params.token_merging:g}")
    settings += [f'ControlNet {i}: "{_unit(unit)}"' for i, unit in enumerate(params.controls)]
    if lora_hashes:
        settings.append('Lora hashes: "' + ", ".join(f"{name}: {h}" for name, h in lora_hashes.items()) + '"')
    lines.append(", ".join(settings))
    return "\n".join(lines)


def _faces(params: GenerationParams) -> list[str]:
    faces = params.face_restoration
    if faces is None:
        return []
    return [f"Face restoration: {faces.model or 'default'}"] + (
        [f"Face restoration visibility: {faces.visibility:g}"] if faces.visibility < 1 else [])


def _unit(unit) -> str:
    """A control unit as A1111's ControlNet extension writes it (quoted in the settings line)."""
    known = module_named(unit.module)
    module = known or unit.module
    a = threshold(module, "a", unit.threshold_a) if known else unit.threshold_a
    b = threshold(module, "b", unit.threshold_b) if known else unit.threshold_b
    return (f"Module: {module}, Model: {unit.model}, Weight: {unit.weight:g}, "
            f"Resize Mode: {RESIZE_MODE_NAMES[unit.resize_mode]}, Processor Res: {unit.processor_res}, "
            f"Threshold A: {a:g}, Threshold B: {b:g}, Guidance Start: {unit.guidance_start:g}, "
            f"Guidance End: {unit.guidance_end:g}, Pixel Perfect: {unit.pixel_perfect}, "
            f"Control Mode: {CONTROL_MODE_NAMES[unit.control_mode]}")
