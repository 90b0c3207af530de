"""Loading a model for the engine: where its weights are (hub id, folder, single file, the tiny
ones), which family's pipeline class loads them, the dtype and threads, the one-time bf16 copy,
the channels-last layout and the OpenVINO UNet; what /health reports about each choice.

Loading follows the measured CPU settings (docs/performance.md): PyTorch SDPA attention
(slicing is opt-in: ~1.3-1.5x slower per step and no memory saved), bfloat16 only where the
CPU has native bf16 (from a bf16 copy made once), torch threads = physical cores, and the UNet on
OpenVINO where ``SD_BACKEND`` says and the family has it (openvino_backend.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import time
from pathlib import Path

import diffusers
import torch

from model_server import cpu
from model_server.engine import openvino_backend, single_file
from model_server.engine.channels_last import to_channels_last
from model_server.engine.pipeline_files import pipeline_patterns
from model_server.engine.residency import MappedWeights
from model_server.errors import redact
from model_server.families import FAMILIES, Family
from model_server.families.detect import TINY, from_folder, openvino_only
from model_server.loading.download import ensure_pipeline
from model_server.loading.hub_files import is_hub_id
from model_server.loading.progress import LoadProgress
from model_server.models.catalog import is_one_step, kind_of
from model_server.pipeline import load_error
from model_server.settings import ModelServerSettings

log = logging.getLogger(__name__)


def choose_dtype(requested: str, flags: set[str] | None = None, env=None) -> tuple[torch.dtype, str]:
    if requested == "float32":
        return torch.float32, "configured"
    if requested == "bfloat16":
        return torch.bfloat16, "configured"
    native, reason = cpu.native_bf16(flags, env)
    return (torch.bfloat16 if native else torch.float32), reason


def resolve_model(settings: ModelServerSettings, progress: LoadProgress | None = None) -> str:
    """Hub id or local directory; the tiny names write (once) and use a tiny random-weight model of
    their family; a single-file checkpoint is converted (once) to a diffusers folder."""
    if settings.model in TINY:
        from model_server.engine.tiny_model import write_tiny

        return str(write_tiny(settings.model, Path(settings.cache_dir)))
    if kind_of(settings.model) == "single_file":
        return single_file.diffusers_folder(settings.model, settings, progress or LoadProgress())
    return settings.model


def local_dir(source: str, settings: ModelServerSettings) -> str | None:
    """The directory the weights were loaded from (a hub id's cached snapshot), if there is one."""
    if Path(source).is_dir():
        return source
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(source, revision=settings.revision, token=settings.token, local_files_only=True)
    except Exception:  # not in the cache in the expected form: fall back to plain copies
        return None


def from_pretrained(source: str, settings: ModelServerSettings, dtype: torch.dtype, family: Family):
    """The family's text-to-image pipeline over ``source``; a clear, token-free load error if it fails."""
    kwargs = dict(dtype=dtype, low_cpu_mem_usage=True, token=settings.token, revision=settings.revision)
    if not settings.safety_checker and family.name != "sdxl":  # SDXL pipelines have no safety checker
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    try:
        return getattr(diffusers, family.pipelines["txt2img"]).from_pretrained(source, **kwargs)
    except Exception as exc:  # any loader failure becomes a clear, token-free message
        message = redact(f"could not load model {source!r}: {type(exc).__name__}: {exc}", settings.token)
        name = type(exc).__name__
        if "Gated" in name or "401" in str(exc) or "403" in str(exc):
            hint = "The model needs a Hugging Face token with access: set HF_TOKEN (or HF_TOKEN_FILE)."
        elif Path(source).exists():
            hint = "The directory exists but is not a complete diffusers pipeline (model_index.json, unet/, vae/, ...)."
        else:
            hint = ("Download the model once with network access (it is cached under HF_HOME), or set "
                    "SD_MODEL to a local diffusers directory; SD_MODEL=tiny runs an offline demo model.")
        raise load_error(message[:2000], hint) from None


def quiet_progress_bars() -> None:
    # Loader progress bars would interleave with the server's log lines.
    import diffusers.utils.logging
    import transformers.utils.logging

    import huggingface_hub.utils

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    huggingface_hub.utils.disable_progress_bars()


def bf16_copy(source: str, settings: ModelServerSettings, unet_only: bool = False,
              progress: LoadProgress | None = None) -> tuple[str, dict]:
    """The cached bf16 copy of ``source`` (made once, in a child process; see model_server.engine.convert),
    of its UNet alone with ``unet_only``.

    Falls back to ``source`` itself, converting while loading, if the copy cannot be made.
    """
    from model_server.engine.convert import converted, run_once

    what = "unet" if unet_only else settings.safety_checker
    key = hashlib.sha256(f"{source}\0{settings.revision}\0{what}".encode()).hexdigest()[:12]
    dest = Path(settings.cache_dir) / "bf16" / f"{Path(source).name or 'model'}-{key}"
    if converted(dest):
        return str(dest), {"weights": "bf16 copy (cached)"}
    args = ["model_server.engine.convert", source, str(dest)]
    args += ["--revision", settings.revision] if settings.revision else []
    args += ["--safety-checker"] if settings.safety_checker else []
    args += ["--unet-only"] if unet_only else []
    env = dict(os.environ, **({"HF_TOKEN": settings.token} if settings.token else {}))
    if progress is not None:
        progress.start("converting", f"{source} to bfloat16, once (later starts map the copy)")
    seconds, _ = run_once(f"converting {source} to bfloat16", args, dest, env=env,
                          clean=lambda text: redact(text, settings.token))
    if seconds is None:
        log.warning("no bf16 copy: converting while loading instead")
        return source, {"weights": "converted while loading"}
    return str(dest), {"weights": "bf16 copy (made now)", "conversion_seconds": seconds}


def _described(pipe, family: Family, dtype: torch.dtype, why: str, threads: int, started: float, checker: bool,
               **chosen) -> dict:
    """What /health shows of any loaded model (``chosen``: what its loader decided besides)."""
    return {"pipeline": "diffusers", "family": family.name, "dtype": str(dtype).removeprefix("torch."),
            "dtype_reason": why, **chosen, "threads": threads,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "safety_checker": checker,
            "default_scheduler": type(pipe.scheduler).__name__, "torch": str(torch.__version__),
            "load_seconds": round(time.monotonic() - started, 2)}


def _openvino_only(folder: Path, settings: ModelServerSettings, family: Family, dtype: torch.dtype, why: str,
                   threads: int, side: int, progress: LoadProgress) -> "Loaded":
    """A model published as OpenVINO IR (engine/openvino_ir_model): every part on OpenVINO, in bf16 where the CPU
    has it natively (SD_DTYPE as for any model), no torch weights to map or release."""
    from model_server.engine import openvino_ir_model

    progress.start("loading", f"the OpenVINO IR of {settings.model}")
    started = time.monotonic()
    pipe, backend = openvino_ir_model.load(folder, family, "bf16" if dtype == torch.bfloat16 else "f32", threads,
                                           progress, side, settings.vae_tile_above)
    opts = {**_described(pipe, family, dtype, why, threads, started, False), **backend}
    log.info("loaded %s in %.1f s: %s", settings.model, opts["load_seconds"], opts)
    ignored = [name for name, on in (("SD_SAFETY_CHECKER", settings.safety_checker),
                                     ("SD_BACKEND=torch", settings.backend == "torch"),
                                     (f"SD_INT8={settings.int8}", settings.int8 not in ("none", "auto"))) if on]
    if ignored:  # the model runs as published: no torch weights for a checker or torch, quantized or not already
        log.warning("%s: ignored for %s, a model published as OpenVINO IR", ", ".join(ignored), settings.model)
    return Loaded(pipe, family, opts, dataclasses.replace(settings, channels_last=False),
                  MappedWeights(None), ov_pipe=pipe, fast_unet=None, openvino_only=True)


@dataclasses.dataclass
class Loaded:
    """A loaded model and what was decided while loading it (DiffusersPipeline's parts)."""

    pipe: object  # the family's diffusers text-to-image pipeline
    family: Family
    opts: dict  # what /health shows
    settings: ModelServerSettings  # with channels_last resolved
    residency: MappedWeights
    ov_pipe: object | None  # the same modules, the UNet on OpenVINO
    fast_unet: openvino_backend.FastUNet | None
    control_ov: object | None = None  # openvino_control.ControlOnOpenVino: ControlNet jobs' UNet and ControlNets
    openvino_only: bool = False  # a model published as OpenVINO IR: no torch weights (openvino_ir_model)


def load(settings: ModelServerSettings, progress: LoadProgress) -> Loaded:
    """Download (if needed), convert (once), load and compile the model, each phase reported to ``progress``."""
    quiet_progress_bars()
    threads = settings.threads or cpu.usable_cores()
    torch.set_num_threads(threads)
    dtype, why = choose_dtype(settings.dtype)
    source = resolve_model(settings, progress)
    checkpoint = single_file.checkpoint_hash(source) if kind_of(settings.model) == "single_file" else None
    if is_hub_id(source):
        progress.start("loading", f"asking the hub which files of {source} are needed")
        ensure_pipeline(source, settings.revision, settings.token, progress, settings.download_free_margin_mb,
                        pipeline_patterns)
    folder = local_dir(source, settings)
    family = FAMILIES[TINY[settings.model][0] if settings.model in TINY
                      else from_folder(Path(folder or source)) or "sd1"]
    side = family.default_size(is_one_step(settings.model, settings.model), settings.default_size)
    if folder is not None and openvino_only(Path(folder)):
        return _openvino_only(Path(folder), settings, family, dtype, why, threads, side, progress)
    weights = {"weights": "as stored"}
    if dtype == torch.bfloat16 and settings.bf16_cache:
        source, weights = bf16_copy(source, settings, progress=progress)
    progress.start("loading", f"the weights of {settings.model}")
    started = time.monotonic()
    pipe = from_pretrained(source, settings, dtype, family)
    if settings.attention == "sliced":
        pipe.enable_attention_slicing()
    layout = {}
    folder = local_dir(source, settings)
    channels_last, layout["channels_last_reason"] = (
        (settings.channels_last, "configured") if settings.channels_last is not None else cpu.channels_last_pays())
    int8, int8_why = openvino_backend.int8_mode(settings.int8, pipe.unet)
    on_openvino, backend_why = openvino_backend.choose(settings, dtype, int8)
    if on_openvino and folder is None:
        on_openvino, backend_why = False, "OpenVINO needs the model's files in a local directory"
    int8 = int8 if on_openvino else "none"
    settings = dataclasses.replace(settings, int8=int8)  # what every part loaded below, and the plan, see
    pipe.set_progress_bar_config(disable=True)
    ov_pipe, fast_unet, backend = (
        openvino_backend.attach(pipe, folder, settings, dtype, threads, backend_why, progress, side, family)
        if on_openvino else (None, None, {"backend": "torch", "backend_reason": backend_why}))
    if int8 != "none" and "openvino_int8" in backend:
        backend["openvino_int8_reason"] = int8_why
    if channels_last:
        # Before a LoRA is attached (per job): its wrappers rename the conv weights. Only the torch modules
        # that run: NHWC copies are private memory, while one OpenVINO replaces stays mapped and idle.
        for name, moved in (("unet", ov_pipe is not None), ("vae", backend.get("openvino_vae") == "decode")):
            if not moved:
                counts = to_channels_last(getattr(pipe, name), folder and Path(folder) / name)
                layout[f"channels_last_{name}"] = f"{counts['from_file']} read from file, {counts['copied']} copied"
    has_checker = getattr(pipe, "safety_checker", None) is not None
    if settings.safety_checker and not has_checker:
        log.warning("SD_SAFETY_CHECKER is on but %s has no safety checker", settings.model)
    opts = {
        **_described(pipe, family, dtype, why, threads, started, has_checker,
                     attention="sliced" if settings.attention == "sliced" else "sdpa", channels_last=channels_last,
                     **layout),
        **weights,
        **backend,
        **({"checkpoint_hash": checkpoint} if checkpoint else {}),
    }
    log.info("loaded %s in %.1f s: %s", settings.model, opts["load_seconds"], opts)
    residency = MappedWeights(folder, settings.release_idle_weights != "none")
    opts["release_idle_weights"] = settings.release_idle_weights if residency.enabled else "none"
    control_ov = None
    if ov_pipe is not None:
        from model_server.engine.controlnets import config_for
        from model_server.engine.openvino_control import ControlOnOpenVino

        control_ov = ControlOnOpenVino(folder, settings, backend["openvino_precision"], threads,
                                       lambda: config_for(pipe.unet, Path(settings.cache_dir)))
    return Loaded(pipe, family, opts, dataclasses.replace(settings, channels_last=channels_last), residency,
                  ov_pipe, fast_unet, control_ov)
