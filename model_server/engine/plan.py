"""The plan of one job: every engine decision (which UNet runs and why, precision, scheduler,
adapters, decoder, mode, what is released when) made once, from the request and plain facts about
the loaded model, before anything runs. Free of torch: ``tests/model_server/test_plan.py`` decides
every combination without it, and the job's ``engine`` string and /health read the same plan the
pipeline is assembled from (diffusers_pipeline.DiffusersPipeline.generate).
"""

from __future__ import annotations

import dataclasses

from model_server.families import FAMILIES
from model_server.families.detect import FEW_STEP_NAME
from protocol.control import IP_ADAPTER, module_named
from protocol.messages import GenerationParams
from protocol.presets import PRESETS

# The fast preset's LCM-LoRA, as the reasons name it (a job with it runs on torch unless the fused UNet is there).
FAST_LORA = "the fast preset's LCM-LoRA"
# A model published as OpenVINO IR only (engine/openvino_ir_model): what keeps a job on torch cannot run on it.
IR_ONLY = "this model is published as OpenVINO IR only"
IR_ONLY_LCM = f"{IR_ONLY}: the LCM-LoRA is fused into torch weights it does not have"


class NeedsTorch(ValueError):
    """A job only torch weights can run, on a model published as OpenVINO IR only; ``field`` is the request's
    field of the first thing named."""

    def __init__(self, reasons: tuple[str, ...], field: str, multiple: int):
        super().__init__(f"{', '.join(reasons)} {'needs' if len(reasons) == 1 else 'need'} torch weights, and "
                         f"{IR_ONLY}")
        self.reasons, self.field = reasons, field
        self.hint = (f"Use a width and height that are multiples of {multiple}." if field == "width" else
                     "Leave it out, or use the model's diffusers release: its torch weights run it.")


@dataclasses.dataclass(frozen=True)
class EngineFacts:
    """What the loaded model has now, as the plan needs it (the pipeline reports these)."""

    family: str = "sd1"
    dtype: str = "float32"
    openvino: bool = False  # the model's UNet is compiled on OpenVINO
    torch_unet: bool = True  # it has torch weights too (not so for a model published as OpenVINO IR only)
    int8: str = ""  # the OpenVINO UNet's int8 mode ("hybrid", "full") or ""
    fused_lcm: str = "none"  # the fast preset's OpenVINO UNet: none | pending | ready | failed
    lcm_missing: str = ""  # why there is no LCM-LoRA ("" when there is)
    tiny_vae_missing: str = ""  # why there is no tiny decoder ("" when there is, or it was not tried yet)
    inpaint_checkpoint: bool = False  # an inpainting checkpoint is configured (and did not fail to load)
    release_unet: bool = False  # SD_RELEASE_IDLE_WEIGHTS=all: the UNet's pages go after denoising
    # The UNet for ControlNet jobs on OpenVINO: none (no OpenVINO) | pending (converted on first use) | ready | failed
    control_unet: str = "none"
    control_failed: frozenset = frozenset()  # ControlNets with no OpenVINO copy (jobs naming one run on torch)
    control_int8: bool = False  # the control UNet and ControlNets keep int8 matmul weights (SD_INT8 set)
    vae_tile_above: int = 0  # SD_VAE_TILE_ABOVE: the torch VAE tiles images with more pixels than this squared
    # The sides the OpenVINO UNet takes are multiples of this (its graph upsamples by fixed factors, where torch's
    # matches each skip connection's size): 8 x 2 per downsampling stage, 64 for SD and SDXL.
    openvino_multiple: int = 8


@dataclasses.dataclass(frozen=True)
class Plan:
    """How one job runs. ``unet`` is "openvino", "openvino-lcm" (the LCM-LoRA fused into its own IR),
    "openvino-control" (the UNet taking ControlNet residuals, the ControlNets on OpenVINO too) or "torch";
    ``on_torch_because`` says what in the job keeps it off OpenVINO when the model has it."""

    family: str
    mode: str  # txt2img | img2img | inpaint
    precision: str
    unet: str
    on_torch_because: tuple[str, ...]
    converts_first: bool  # the fused LCM UNet (or the control UNet) is converted to OpenVINO on this job (once)
    lcm: bool  # the LCM-LoRA adapter is on
    loras: tuple[tuple[str, float], ...]  # the job's own LoRAs (name, weight)
    scheduler: str
    trailing: bool  # few-step models sample from the last timestep (1 step starts at t=999)
    decoder: str  # tiny | full | tiled (the full VAE in overlapping tiles: bounded activations for large images)
    inpaint_checkpoint: bool  # inpaint with the 9-channel checkpoint's UNet instead of blending
    deep_cache: int
    token_merging: float
    tiling: bool
    guidance_halves: bool  # guidance's two halves through the torch UNet one after the other (large images)
    # (after which phase, which component): released to the page cache when that phase ends.
    release: tuple[tuple[str, str], ...]
    # The preset's step caching was left out: the UNet runs on OpenVINO, whose full steps are faster.
    cache_left_out: bool = False
    controls: int = 0  # ControlNet units: the family's ControlNet pipeline class runs the job
    ip_adapter: bool = False  # an IP-Adapter unit: its adapter attached to the torch UNet

    @property
    def engine(self) -> str:
        """What runs the UNet, and why when it is not the model's usual engine (shown on the job)."""
        if self.unet == "torch" and not self.on_torch_because:
            return f"torch {self.precision}"
        if self.unet == "torch":
            why = self.on_torch_because
            return f"torch {self.precision}: {', '.join(why)} {'runs' if len(why) == 1 else 'run'} on torch"
        if self.unet == "openvino-lcm":
            first = " (converted to OpenVINO on this first fast job, once)" if self.converts_first else ""
            return f"openvino {self.precision}, the LCM-LoRA fused{first}"
        if self.unet == "openvino-control":
            first = " (converted to OpenVINO on this first ControlNet job, once)" if self.converts_first else ""
            return f"openvino {self.precision}, ControlNet on OpenVINO{first}"
        if self.cache_left_out:
            return f"openvino {self.precision}, every step (the preset's step caching is for torch)"
        return f"openvino {self.precision}"


def decide(params: GenerationParams, facts: EngineFacts) -> Plan:
    """The plan for ``params`` on a model with ``facts``."""
    preset = PRESETS.get(params.preset)
    lcm = bool(preset and preset.lcm_lora)
    fused = lcm and facts.fused_lcm in ("pending", "ready")
    inpaint_checkpoint = params.mode == "inpaint" and facts.inpaint_checkpoint and not lcm and not params.loras
    adapters = [unit for unit in params.controls if module_named(unit.module) == IP_ADAPTER]
    nets = [unit for unit in params.controls if module_named(unit.module) != IP_ADAPTER]
    controls = bool(nets)
    # A ControlNet job runs the control UNet on OpenVINO, with its ControlNets there too, once they are made (or
    # made on this job); not beside the fast preset's fused UNet (there is no fused control UNet).
    control_on_openvino = (controls and facts.control_unet in ("pending", "ready") and not lcm
                           and not {unit.model for unit in nets} & facts.control_failed)
    # (what, asked, the request's field)
    candidates = ((FAST_LORA, lcm and (not fused or controls), "preset"), ("LoRA", bool(params.loras), "loras"),
                  ("deep_cache", params.deep_cache > 1, "deep_cache"),
                  ("token_merging", bool(params.token_merging), "token_merging"),
                  ("tiling", params.tiling, "tiling"),
                  ("the inpainting checkpoint", inpaint_checkpoint, "mode"),
                  ("ControlNet", controls and not control_on_openvino, "controls"),
                  ("IP-Adapter", bool(adapters), "controls"),
                  (f"a size not a multiple of {facts.openvino_multiple}",
                   bool(params.width % facts.openvino_multiple or params.height % facts.openvino_multiple), "width"))
    # Step caching is a torch lever. A job that has it only from its preset (balanced) runs every step on OpenVINO
    # instead, where that was measured faster (docs/performance.md, "Side by side"); one that asks for it, or that
    # runs on torch anyway, keeps it.
    others = [what for what, asked, _ in candidates if asked and what != "deep_cache"]
    cache_left_out = bool(facts.openvino and params.deep_cache > 1 and not others and preset is not None
                          and params.deep_cache == preset.deep_cache)
    # ControlNet residuals go into every block of every step: the cached deep features would not carry them (and
    # beside an IP-Adapter's image attention the two were never tried together).
    deep_cache = params.deep_cache if params.deep_cache > 1 and not cache_left_out and not params.controls else 0
    kept = [(what, field) for what, asked, field in candidates if asked and (what != "deep_cache" or deep_cache)]
    reasons = tuple(what for what, _ in kept) if facts.openvino else ()
    if reasons and not facts.torch_unet:
        raise NeedsTorch(reasons, kept[0][1], facts.openvino_multiple)
    unet = ("torch" if not facts.openvino or reasons else "openvino-control" if controls
            else "openvino-lcm" if lcm else "openvino")
    precision = facts.dtype
    if unet == "openvino" and facts.int8 in ("hybrid", "full", "weights"):
        precision = f"int8 ({facts.int8})"
    elif unet == "openvino-control" and facts.control_int8:
        precision = "int8 (weights)"
    release = tuple((phase, part) for phase, part in (
        *(("encoding", encoder) for encoder in FAMILIES[facts.family].text_encoders),
        ("denoising", "unet") if facts.release_unet else ("", "")) if phase)
    return Plan(
        family=facts.family, mode=params.mode, precision=precision, unet=unet, on_torch_because=reasons,
        converts_first=(unet == "openvino-lcm" and facts.fused_lcm == "pending"
                        or unet == "openvino-control" and facts.control_unet == "pending"), lcm=lcm,
        loras=tuple((ref.name, ref.weight) for ref in params.loras), scheduler=params.scheduler,
        # Few-step models, and few-step LoRAs (SDXL-Lightning's, Hyper-SD's) on any model, sample from the last
        # timestep on: 1 step starts at t=999.
        trailing=bool(preset and preset.one_step) or any(FEW_STEP_NAME.search(ref.name) for ref in params.loras),
        decoder=_decoder(params, facts, bool(preset and preset.tiny_vae)),
        inpaint_checkpoint=inpaint_checkpoint, deep_cache=deep_cache, cache_left_out=cache_left_out,
        token_merging=params.token_merging, tiling=params.tiling, release=release, controls=len(nets),
        ip_adapter=bool(adapters),
        # Where the activations are largest (the VAE's tiling size): half a guided batch at a time, on torch, not
        # beside step caching (it keeps features per batch) nor units (ControlNet residuals and IP-Adapter image
        # embeddings come for the whole batch).
        guidance_halves=(unet == "torch" and params.guidance_scale > 1 and not deep_cache and not params.controls
                         and _large(params, facts)))


def needs_torch(params: GenerationParams, facts: EngineFacts) -> NeedsTorch | None:
    """Why ``params`` cannot run on a model without torch weights (``facts.torch_unet`` False), or None."""
    try:
        decide(params, facts)
    except NeedsTorch as exc:
        return exc
    return None


def _decoder(params: GenerationParams, facts: EngineFacts, tiny_asked: bool) -> str:
    if tiny_asked and not facts.tiny_vae_missing:
        return "tiny"
    large = _large(params, facts)
    # Seamless tiling needs the whole image's wrap-around padding. (An OpenVINO decoder steps aside for the torch
    # VAE's tiles: vae_tiles.)
    return "tiled" if large and not params.tiling else "full"


def _large(params: GenerationParams, facts: EngineFacts) -> bool:
    """An image above the tiling size (SD_VAE_TILE_ABOVE), where activations, not weights, set the peak."""
    return bool(facts.vae_tile_above) and params.width * params.height > facts.vae_tile_above ** 2
