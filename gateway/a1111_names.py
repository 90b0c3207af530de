"""AUTOMATIC1111's sampler and scheduler names, mapped onto ours."""

from __future__ import annotations

from gateway.errors import ApiError

# A1111 sampler name -> (our scheduler, aliases A1111 lists for it)
SAMPLERS = {
    "Euler a": ("euler_a", ["k_euler_a", "k_euler_ancestral"]),
    "Euler": ("euler", ["k_euler"]),
    "DPM++ 2M": ("dpmpp_2m", ["k_dpmpp_2m"]),
    "DPM++ 2M Karras": ("dpmpp_2m_karras", ["k_dpmpp_2m_ka"]),
    "DDIM": ("ddim", []),
    "PLMS": ("pndm", []),
    "PNDM": ("pndm", []),
    "UniPC": ("unipc", []),
    "LCM": ("lcm", []),
}
_BY_LOWER = {name.lower(): name for name in SAMPLERS} | {
    alias: name for name, (_, aliases) in SAMPLERS.items() for alias in aliases}
SCHEDULERS = [("automatic", "Automatic"), ("karras", "Karras")]


def resolve_sampler(sampler_name: str | None, scheduler: str | None) -> tuple[str | None, str | None]:
    """(our scheduler key, A1111 display name); (None, None) when none is named, so the preset (or a
    one-step model's turbo preset) chooses; an unknown sampler is A1111's 404."""
    if not sampler_name:
        return None, None
    name = _BY_LOWER.get(sampler_name.strip().lower())
    if name is None:
        raise ApiError(404, "sampler_not_found", "Sampler not found",
                       f"Use one of: {', '.join(SAMPLERS)} (GET /sdapi/v1/samplers).", field="sampler_name")
    if (scheduler or "").lower() == "karras" and name == "DPM++ 2M":
        name = "DPM++ 2M Karras"
    return SAMPLERS[name][0], name
