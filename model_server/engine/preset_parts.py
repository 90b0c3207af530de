"""Loads what the "fast" preset needs on top of the model: the LCM-LoRA adapter and TAESD.

Both are optional and load on the first fast job, not at start: the LoRA is 135 MB in bf16,
and the default path's peak memory (measured 2.97 GiB without it, 3.13 with it, for SD v1.4)
should not pay for a preset it may never use. A part that is missing at start (a local path
that does not exist, a hub id not cached while offline) or fails to load is logged and disables
only what needs it, never the server: without LCM-LoRA the fast preset is refused with a
reason; without TAESD it decodes with the full VAE.

On torch the LoRA stays a separate, switchable adapter rather than being fused into the UNet:
fusing would make every preset pay for it, and fusing/unfusing per request drifts bf16 weights.
Switched off it costs nothing; switched on it adds its low-rank matmuls to each fast step. On
the OpenVINO backend it is fused, into a UNet IR of its own (openvino_backend.FastUNet).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from diffusers import AutoencoderTiny, StableDiffusionPipeline

from model_server.families import FAMILIES, Family
from model_server.families.detect import TINY
from model_server.loading.download import ensure_files
from model_server.loading.hub_files import is_hub_id
from model_server.loading.progress import LoadProgress
from model_server.settings import ModelServerSettings

log = logging.getLogger(__name__)

ADAPTER = "lcm"
LORA_FILES = ["pytorch_lora_weights.safetensors"]
TAESD_FILES = ["config.json", "diffusion_pytorch_model.safetensors"]


def fetch_from_hub(source: str, settings: ModelServerSettings, files: list[str]) -> None:
    """A part given as a hub id: its ``files`` downloaded (resumably, logged as they come) unless cached;
    raises PipelineLoadError saying why not. A local path needs nothing."""
    if is_hub_id(source):
        ensure_files(source, None, settings.token, LoadProgress(), settings.download_free_margin_mb, files)


def switched_off(value: str | None) -> bool:
    """A part's setting that turns it off (`none`, as an empty value reads, or off/false/0)."""
    return value is None or value.lower() in ("none", "off", "false", "0")


def _source(value: str, settings: ModelServerSettings, kind: str, family: Family) -> str | None:
    """Where to load a part from: None when turned off; "auto" is the family's published one (the local
    random ones of the family's shapes for the tiny models); "" when the family has none."""
    if switched_off(value):
        return None
    if value in ("auto", "tiny") and (value == "tiny" or settings.model in TINY):
        from model_server.engine.tiny_model import write_tiny_extras

        lora, taesd = write_tiny_extras(Path(settings.cache_dir) / f"tiny-extras-{family.name}", family.name)
        return str(lora if kind == "lora" else taesd)
    if value == "auto":
        return family.lcm_lora if kind == "lora" else family.tiny_vae
    return value


def resolve(settings: ModelServerSettings, family: Family = FAMILIES["sd1"]) -> tuple[str | None, str | None, str]:
    """(LCM-LoRA source, tiny decoder source, why the LoRA is unavailable or "") for a model of
    ``family``, checked without loading."""
    lora, vae = _source(settings.lcm_lora, settings, "lora", family), _source(settings.tiny_vae, settings, "vae",
                                                                               family)
    if lora is None:
        return None, vae or None, "SD_LCM_LORA=none"
    if not lora:
        return None, vae or None, f"no LCM-LoRA is published for {family.title}"
    return lora, vae or None, missing(lora, LORA_FILES[0])


def missing(source: str, filename: str) -> str:
    if Path(source).exists():
        return ""
    if not is_hub_id(source):
        return f"{source!r} does not exist"
    from huggingface_hub import constants, try_to_load_from_cache

    if constants.HF_HUB_OFFLINE and not isinstance(try_to_load_from_cache(source, filename), str):
        return f"{source!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set"
    return ""


def lora_file(source: str) -> str | None:
    """The LCM-LoRA's weights file on disk (a folder's, or the hub cache's copy once fetched)."""
    if Path(source).is_dir():
        return str(Path(source) / LORA_FILES[0])
    if Path(source).is_file():
        return source
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(source, LORA_FILES[0])
    return found if isinstance(found, str) else None


def _failed(what: str, source: str, exc: Exception, consequence: str, settings: ModelServerSettings) -> str:
    """Log a part that would not load; the reason, token-free, for /health and job errors."""
    first_line = str(exc).splitlines()[0][:300] if str(exc) else ""
    reason = f"could not load the {what} {source!r}: {type(exc).__name__}: {first_line}"
    log.warning("%s; %s", reason, consequence)
    return reason.replace(settings.token, "***") if settings.token else reason


def load_lcm_lora(pipe: StableDiffusionPipeline, source: str, settings: ModelServerSettings) -> tuple[bool, str]:
    """Attach the LCM-LoRA adapter, switched off. (loaded, source or why not)."""
    try:
        fetch_from_hub(source, settings, LORA_FILES)
        # Named for a hub id: offline, diffusers will not look a cached adapter up without its file name.
        named = {"weight_name": LORA_FILES[0]} if is_hub_id(source) else {}
        pipe.load_lora_weights(source, adapter_name=ADAPTER, token=settings.token, low_cpu_mem_usage=True, **named)
        # LoRA matrices arrive in float32; keep them in the model's dtype (half the memory in
        # bf16, and no dtype round trip per layer).
        dtype = pipe.unet.dtype
        for name, param in pipe.unet.named_parameters():
            if "lora_" in name and param.dtype != dtype:
                param.data = param.data.to(dtype)
        pipe.disable_lora()
        return True, source
    except Exception as exc:  # a missing adapter must not take the server down
        return False, _failed("LCM-LoRA", source, exc, "the fast preset is off (set SD_LCM_LORA to a local "
                              "copy, or none)", settings)


def load_tiny_vae(source: str | None, settings: ModelServerSettings,
                  dtype: torch.dtype) -> tuple[AutoencoderTiny | None, str]:
    if source is None:
        return None, "SD_TINY_VAE=none"
    try:
        fetch_from_hub(source, settings, TAESD_FILES)
        vae = AutoencoderTiny.from_pretrained(source, dtype=dtype, token=settings.token)
        return vae.eval(), source
    except Exception as exc:
        return None, _failed("tiny VAE", source, exc, "the fast preset decodes with the full VAE", settings)

