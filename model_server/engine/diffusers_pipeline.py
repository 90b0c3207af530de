"""The real pipeline: diffusers Stable Diffusion on the CPU.

Loading follows the measured CPU settings (docs/performance.md): PyTorch SDPA attention
(slicing is opt-in: ~1.3-1.5x slower per step and no memory saved), bfloat16 only where the
CPU has native bf16 (from a bf16 copy made once), torch threads = physical cores, idle mapped
weights released after their phase of each job (residency.py), and the UNet on OpenVINO where
``SD_BACKEND`` says (openvino_backend.py). Per job it applies the preset: the LCM-LoRA adapter
and TAESD decoder (preset_parts.py) and step caching (deepcache.py).

Over 250 lines on purpose: loading (source resolution, the bf16 copy, dtype and thread choice)
and running (scheduler, per-step callback, cancel/interrupt, weight release) share one object's
state; the separable parts already live in the sibling modules.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from PIL import Image
from diffusers import (DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler,
                       EulerDiscreteScheduler, LCMScheduler, PNDMScheduler, StableDiffusionImg2ImgPipeline,
                       StableDiffusionInpaintPipeline, StableDiffusionPipeline, UniPCMultistepScheduler)

from model_server import cpu
from model_server.engine import inpaint_model, openvino_backend, preset_parts, single_file
from model_server.engine.convert import ConversionStopped
from model_server.engine.deepcache import DeepCache
from model_server.engine.loras import LoraAdapters
from model_server.engine.pipeline_files import pipeline_patterns
from model_server.engine.channels_last import to_channels_last
from model_server.engine.residency import MappedWeights
from model_server.errors import redact_paths
from model_server.memory import release_memory
from model_server.pipeline import (SCHEDULERS, JobCancelledError, PipelineLoadError, load_error, max_steps,
                                   preset_unavailable)
from model_server.settings import ModelServerSettings
from model_server.engine.tiling import seamless
from model_server.engine.token_merging import TokenMerging
from model_server.loading.download import ensure_pipeline
from model_server.loading.hub_files import is_hub_id
from model_server.loading.progress import LoadProgress
from model_server.models.catalog import kind_of
from protocol.errors import ErrorCode
from protocol.messages import GenerationParams, StopMode, steps_run
from protocol.presets import PRESETS

log = logging.getLogger(__name__)

_SCHEDULER_FACTORIES = {
    "pndm": lambda cfg: PNDMScheduler.from_config(cfg, skip_prk_steps=True),
    "ddim": lambda cfg: DDIMScheduler.from_config(cfg),
    "euler": lambda cfg: EulerDiscreteScheduler.from_config(cfg),
    "euler_a": lambda cfg: EulerAncestralDiscreteScheduler.from_config(cfg),
    "dpmpp_2m": lambda cfg: DPMSolverMultistepScheduler.from_config(cfg, algorithm_type="dpmsolver++"),
    "dpmpp_2m_karras": lambda cfg: DPMSolverMultistepScheduler.from_config(
        cfg, algorithm_type="dpmsolver++", use_karras_sigmas=True),
    "unipc": lambda cfg: UniPCMultistepScheduler.from_config(cfg),
    "lcm": lambda cfg: LCMScheduler.from_config(cfg),
}


def choose_dtype(requested: str, flags: set[str] | None = None, env=None) -> tuple[torch.dtype, str]:
    if requested == "float32":
        return torch.float32, "configured"
    if requested == "bfloat16":
        return torch.bfloat16, "configured"
    native, reason = cpu.native_bf16(flags, env)
    return (torch.bfloat16 if native else torch.float32), reason


def resolve_model(settings: ModelServerSettings, progress: LoadProgress | None = None) -> str:
    """Hub id or local directory; "tiny" and "tiny-turbo" write (once) and use a tiny random-weight
    model; a single-file checkpoint is converted (once) to a diffusers folder."""
    if settings.model in ("tiny", "tiny-turbo"):
        from model_server.engine.tiny_model import write_tiny_model

        turbo = settings.model == "tiny-turbo"
        return str(write_tiny_model(Path(settings.cache_dir) / ("tiny-turbo" if turbo else "tiny-sd"), turbo=turbo))
    if kind_of(settings.model) == "single_file":
        return single_file.diffusers_folder(settings.model, settings, progress or LoadProgress())
    return settings.model


def _redact(text: str, token: str | None) -> str:
    """No token and no internal paths (library messages name cache files) in what users see."""
    text = redact_paths(text)
    return text.replace(token, "***") if token else text


def _local_dir(source: str, settings: ModelServerSettings) -> str | None:
    """The directory the weights were loaded from (a hub id's cached snapshot), if there is one."""
    if Path(source).is_dir():
        return source
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(source, revision=settings.revision, token=settings.token, local_files_only=True)
    except Exception:  # not in the cache in the expected form: fall back to plain copies
        return None


def _from_pretrained(source: str, settings: ModelServerSettings, dtype: torch.dtype):
    kwargs = dict(dtype=dtype, low_cpu_mem_usage=True, token=settings.token, revision=settings.revision)
    if not settings.safety_checker:
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    try:
        return StableDiffusionPipeline.from_pretrained(source, **kwargs)
    except Exception as exc:  # any loader failure becomes a clear, token-free message
        message = _redact(f"could not load model {source!r}: {type(exc).__name__}: {exc}", settings.token)
        name = type(exc).__name__
        if "Gated" in name or "401" in str(exc) or "403" in str(exc):
            hint = "The model needs a Hugging Face token with access: set HF_TOKEN (or HF_TOKEN_FILE)."
        elif Path(source).exists():
            hint = "The directory exists but is not a complete diffusers pipeline (model_index.json, unet/, vae/, ...)."
        else:
            hint = ("Download the model once with network access (it is cached under HF_HOME), or set "
                    "SD_MODEL to a local diffusers directory; SD_MODEL=tiny runs an offline demo model.")
        raise load_error(message[:2000], hint) from None


# A linear map from SD v1's 4 latent channels to RGB: a well-known cheap approximation of the
# VAE decoder, good enough to watch an image form, at about a millisecond per step.
_LATENT_RGB = torch.tensor([[0.298, 0.207, 0.208], [0.187, 0.286, 0.173],
                            [-0.158, 0.189, 0.264], [-0.184, -0.271, -0.473]])


def latent_preview(latents: torch.Tensor):
    """A latent-resolution RGB preview (PIL) of the first latent in a batch."""
    from PIL import Image

    rgb = torch.einsum("chw,cr->hwr", latents[0].float(), _LATENT_RGB)
    pixels = ((rgb + 1) * 127.5).clamp(0, 255).to(torch.uint8).numpy()
    return Image.fromarray(pixels, "RGB")


def _quiet_progress_bars() -> None:
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
                          clean=lambda text: _redact(text, settings.token))
    if seconds is None:
        log.warning("no bf16 copy: converting while loading instead")
        return source, {"weights": "converted while loading"}
    return str(dest), {"weights": "bf16 copy (made now)", "conversion_seconds": seconds}


class DiffusersPipeline:
    """Stable Diffusion on the CPU through diffusers: the Pipeline interface over a loaded model."""

    def __init__(self, pipe: StableDiffusionPipeline, model_id: str, opts: dict,
                 settings: ModelServerSettings | None = None, residency: MappedWeights | None = None,
                 ov_pipe: StableDiffusionPipeline | None = None, fast_unet: openvino_backend.FastUNet | None = None):
        self.pipe = pipe
        self.ov_pipe = ov_pipe  # the same modules, the UNet on OpenVINO (openvino_backend)
        self.fast_unet = fast_unet  # the fast preset's OpenVINO UNet (LCM-LoRA fused), converted on first use
        self.model_id = model_id
        self._opts = opts
        self._settings = settings or ModelServerSettings(lcm_lora="none", tiny_vae="none",
                                                         release_idle_weights="none")
        self.residency = residency or MappedWeights(None)
        self._release_unet = self._settings.release_idle_weights == "all"
        self._base_scheduler_config = pipe.scheduler.config
        # Kept apart: pipe.scheduler is replaced per job, so "default" must not read it back.
        self._default_scheduler = type(pipe.scheduler)
        self._lcm_source, self._vae_source, self._lcm_missing = preset_parts.resolve(self._settings)
        self._fast_loaded = False
        self._tiny_vae_missing = ""  # why TAESD could not load, once it was tried
        self._adapters = LoraAdapters(pipe, self._settings.lora_cache_mb * 2**20)
        self._job_loras: list[tuple[str, Path, float]] = []  # the next jobs' LoRAs (apply_loras)
        self.fast_pipe: StableDiffusionPipeline | None = None  # the same modules, TAESD as decoder
        self._variants: dict[tuple[type, int], StableDiffusionPipeline] = {}
        self._opts["lcm_lora"] = False if self._lcm_missing else f"{self._lcm_source} (loads on first use)"
        self._opts["tiny_vae"] = (f"{self._vae_source} (loads on first use)"
                                  if self._vae_source and not self._lcm_missing else False)
        self._inpaint_source, why = inpaint_model.resolve(self._settings)
        self._inpaint_unet = None
        self._opts["inpaint_model"] = (f"{self._inpaint_source} (loads on the first inpaint job)"
                                       if not why else f"none: the model itself blends ({why})")

    def _inpainting_unet(self, params: GenerationParams):
        """The inpainting checkpoint's UNet (loaded on first use), or None to inpaint with the model:
        when none is configured or it failed to load, and with LoRAs (the LCM preset's too), whose
        adapters are attached to the model's own UNet."""
        preset = PRESETS.get(params.preset)
        if self._inpaint_source is None or (preset and preset.lcm_lora) or params.loras:
            return None
        if self._inpaint_unet is None:
            started = time.monotonic()
            try:
                unet, weights, folder = inpaint_model.load_unet(self._inpaint_source, self._settings,
                                                                self.pipe.unet.dtype, bf16_copy)
            except Exception as exc:  # inpainting goes on with the model, said in /health
                reason = _redact(f"{type(exc).__name__}: {str(exc)[:300]}", self._settings.token)
                log.warning("could not load the inpainting checkpoint %s (%s); inpainting blends with the model",
                            self._inpaint_source, reason)
                self._opts["inpaint_model"] = f"none: {self._inpaint_source} failed to load ({reason})"
                self._inpaint_source = None
                return None
            if self._settings.channels_last:
                to_channels_last(unet, folder)  # read from the file where it can, so the pages stay mapped
            self._inpaint_unet = unet
            self._opts["inpaint_model"] = self._inpaint_source
            self._opts["inpaint_model_weights"] = weights["weights"]
            self._opts["inpaint_model_load_seconds"] = round(time.monotonic() - started, 2)
            log.info("inpainting checkpoint %s ready in %.1f s", self._inpaint_source,
                     self._opts["inpaint_model_load_seconds"])
        return self._inpaint_unet

    def prepare_parts(self, params: GenerationParams, report, stop) -> None:
        """A fast job on OpenVINO needs the UNet with the LCM-LoRA fused in, converted once (about a
        minute): said to the job while it waits, and stopped by its cancel."""
        preset = PRESETS.get(params.preset)
        if not (preset and preset.lcm_lora) or self.ov_pipe is None or self.fast_unet is None \
                or not self.fast_unet.pending:
            return
        if [why for why in self._on_torch_because(params) if why != "the fast preset's LCM-LoRA"]:
            return  # its LoRAs (or levers) run it on torch: nothing to convert for it
        self.load_fast_parts()
        if self._lcm_missing:
            return
        report("converting the fast preset's UNet to OpenVINO, once: about a minute; later fast jobs start at once")
        try:
            self.fast_unet.convert(self._lcm_source, stop=lambda: stop() is StopMode.CANCEL)
        except ConversionStopped:
            raise JobCancelledError() from None

    def prepare_ahead(self, stop, always: bool = False) -> bool:
        """Idle time (SD_PREPARE_AHEAD, or ``always``: fetch --convert): convert the fast preset's fused
        OpenVINO UNet before any fast job asks, when its LoRA is already on disk; a job arriving stops
        it (False: try again later)."""
        if not (self._settings.prepare_ahead or always) or self.ov_pipe is None or self.fast_unet is None \
                or not self.fast_unet.pending or self._lcm_missing:
            return True
        log.info("idle: converting the fast preset's UNet to OpenVINO ahead of the first fast job")
        try:
            self.fast_unet.convert(self._lcm_source, stop=stop, wait_for_lora=True)
        except ConversionStopped:
            return False
        return True

    def load_fast_parts(self) -> None:
        """Attach the LCM-LoRA and load TAESD (the first fast job does this; later ones reuse them)."""
        if self._fast_loaded or self._lcm_missing:
            return
        started = time.monotonic()
        loaded, why = preset_parts.load_lcm_lora(self.pipe, self._lcm_source, self._settings)
        if not loaded:
            self._lcm_missing, self._opts["lcm_lora"] = why, False
            return
        vae_why = self._load_tiny_decoder()
        self._fast_loaded = True
        self._opts["lcm_lora"] = self._lcm_source
        self._opts["fast_parts_load_seconds"] = round(time.monotonic() - started, 2)
        log.info("fast preset ready in %.1f s: LCM-LoRA %s, decoder %s", self._opts["fast_parts_load_seconds"],
                 self._lcm_source, self._vae_source if self.fast_pipe is not None else f"full VAE ({vae_why})")

    def _load_tiny_decoder(self) -> str:
        """Load TAESD once (the fast and turbo presets decode with it): "" or why it is not there."""
        if self.fast_pipe is not None or self._tiny_vae_missing:
            return self._tiny_vae_missing
        tiny_vae, why = preset_parts.load_tiny_vae(self._vae_source, self._settings, self.pipe.unet.dtype)
        if tiny_vae is None:
            self._tiny_vae_missing, self._opts["tiny_vae"] = why, False
            return why
        if self._settings.channels_last:
            tiny_vae.to(memory_format=torch.channels_last)
        # A second pipeline object over the same modules costs nothing.
        self.fast_pipe = StableDiffusionPipeline(**{**self.pipe.components, "vae": tiny_vae},
                                                 requires_safety_checker=False)
        self.fast_pipe.set_progress_bar_config(disable=True)
        self._opts["tiny_vae"] = self._vae_source
        return ""

    @classmethod
    def load(cls, settings: ModelServerSettings, progress: LoadProgress | None = None) -> "DiffusersPipeline":
        """Download (if needed), convert (once), load and compile the model, each phase reported to
        ``progress``; the last phase ends with the load."""
        with (progress or LoadProgress()).over() as phases:
            return cls._load(settings, phases)

    @classmethod
    def _load(cls, settings: ModelServerSettings, progress: LoadProgress) -> "DiffusersPipeline":
        _quiet_progress_bars()
        threads = settings.threads or cpu.usable_cores()
        torch.set_num_threads(threads)
        dtype, why = choose_dtype(settings.dtype)
        source = resolve_model(settings, progress)
        checkpoint = single_file.checkpoint_hash(source) if kind_of(settings.model) == "single_file" else None
        if is_hub_id(source):
            progress.start("loading", f"asking the hub which files of {source} are needed")
            ensure_pipeline(source, settings.revision, settings.token, progress, settings.download_free_margin_mb,
                            pipeline_patterns)
        weights = {"weights": "as stored"}
        if dtype == torch.bfloat16 and settings.bf16_cache:
            source, weights = bf16_copy(source, settings, progress=progress)
        progress.start("loading", f"the weights of {settings.model}")
        started = time.monotonic()
        pipe = _from_pretrained(source, settings, dtype)
        if settings.attention == "sliced":
            pipe.enable_attention_slicing()
        layout = {}
        folder = _local_dir(source, settings)
        channels_last, layout["channels_last_reason"] = (
            (settings.channels_last, "configured") if settings.channels_last is not None else cpu.channels_last_pays())
        on_openvino, backend_why = openvino_backend.choose(settings, dtype)
        if on_openvino and folder is None:
            on_openvino, backend_why = False, "OpenVINO needs the model's files in a local directory"
        pipe.set_progress_bar_config(disable=True)
        ov_pipe, fast_unet, backend = (
            openvino_backend.attach(pipe, folder, settings, dtype, threads, backend_why, progress) if on_openvino
            else (None, None, {"backend": "torch", "backend_reason": backend_why}))
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
            "pipeline": "diffusers",
            "dtype": str(dtype).removeprefix("torch."),
            "dtype_reason": why,
            "attention": "sliced" if settings.attention == "sliced" else "sdpa",
            "channels_last": channels_last,
            **layout,
            "threads": threads,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "safety_checker": has_checker,
            "default_scheduler": type(pipe.scheduler).__name__,
            "torch": str(torch.__version__),
            "load_seconds": round(time.monotonic() - started, 2),
            **weights,
            **backend,
            **({"checkpoint_hash": checkpoint} if checkpoint else {}),
        }
        log.info("loaded %s in %.1f s: %s", settings.model, opts["load_seconds"], opts)
        residency = MappedWeights(folder, settings.release_idle_weights != "none")
        opts["release_idle_weights"] = settings.release_idle_weights if residency.enabled else "none"
        return cls(pipe, settings.model, opts, dataclasses.replace(settings, channels_last=channels_last), residency,
                   ov_pipe, fast_unet)

    def optimizations(self):
        loras = {"loras_loaded": len(self._adapters.loaded()), "loras_mb": round(self._adapters.bytes / 2**20, 1)}
        compiled = [m.report() for m in (self.ov_pipe and self.ov_pipe.unet, self.fast_unet and self.fast_unet.unet,
                                         self.pipe.vae) if hasattr(m, "report")]
        fast = self.fast_unet.info if self.fast_unet is not None else {}
        return {**self._opts, **loras, **fast, **{k: v for report in compiled for k, v in report.items()}}

    def schedulers(self) -> list[str]:
        return list(SCHEDULERS)

    def max_steps(self, scheduler: str) -> int:
        return max_steps(scheduler)

    def unavailable_presets(self) -> dict[str, str]:
        if not self._lcm_missing:
            return {}
        return {name: f"no LCM-LoRA ({self._lcm_missing})" for name, p in PRESETS.items() if p.lcm_lora}

    def apply_loras(self, loras: list[tuple[str, Path, float]]) -> None:
        self._job_loras = list(loras)  # attached by _pipe_for, with the preset's adapter

    def loaded_loras(self) -> set[str]:
        return self._adapters.loaded()

    def _on_torch_because(self, params: GenerationParams) -> list[str]:
        """What in this request the OpenVINO UNet cannot run (so torch's runs it); [] when it can."""
        preset = PRESETS.get(params.preset)
        lcm = bool(preset and preset.lcm_lora)
        return [what for what, asked in (
            ("the fast preset's LCM-LoRA", lcm and not (self.fast_unet and not self.fast_unet.failed)),
            ("LoRA", bool(params.loras)), ("deep_cache", params.deep_cache > 1),
            ("token_merging", bool(params.token_merging)), ("tiling", params.tiling),
            ("the inpainting checkpoint", params.mode == "inpaint" and self._inpaint_source is not None and not lcm
             and not params.loras))
            if asked]

    def engine(self, params: GenerationParams) -> str:
        dtype = self._opts["dtype"]
        if self.ov_pipe is None:
            return f"torch {dtype}"
        why = self._on_torch_because(params)
        if why:
            return f"torch {dtype}: {', '.join(why)} {'runs' if len(why) == 1 else 'run'} on torch"
        preset = PRESETS.get(params.preset)
        if preset and preset.lcm_lora:
            first = " (converted to OpenVINO on this first fast job, once)" if self.fast_unet.pending else ""
            return f"openvino {dtype}, the LCM-LoRA fused{first}"
        int8 = self._opts.get("openvino_int8")
        return f"openvino int8 ({int8})" if int8 in ("hybrid", "full") else f"openvino {dtype}"

    def _pipe_for(self, params: GenerationParams) -> StableDiffusionPipeline:
        """The LCM adapter on or off, and the decoder, as the job's preset says."""
        preset = PRESETS.get(params.preset)
        lcm = bool(preset and preset.lcm_lora)
        if lcm:
            self.load_fast_parts()
        if lcm and self._lcm_missing:
            raise PipelineLoadError(preset_unavailable(params.preset, self._lcm_missing, self.unavailable_presets(),
                                                       ErrorCode.PIPELINE_ERROR))
        self._adapters.use(self._job_loras, [(preset_parts.ADAPTER, 1.0)] if lcm else [],
                           others_attached=self._fast_loaded)
        on_openvino = self.ov_pipe is not None and not self._on_torch_because(params)
        unet = self._openvino_unet(lcm) if on_openvino else None
        if on_openvino and unet is None:  # the fused UNet failed to convert: torch runs it, said in engine
            on_openvino = False
        if preset and preset.tiny_vae and not self._load_tiny_decoder():  # loaded once; "" when it is there
            # the OpenVINO UNet with the tiny decoder (fast, turbo), or torch's
            return self._variant(self.fast_pipe, StableDiffusionPipeline, unet) if on_openvino else self.fast_pipe
        if on_openvino:
            return self._variant(self.ov_pipe, StableDiffusionPipeline, unet) if lcm else self.ov_pipe
        return self.pipe

    def _openvino_unet(self, lcm: bool):
        """The OpenVINO UNet for a job: the fast preset's (LCM-LoRA fused; converted now the first time) or
        the model's. The other one's compiled copy is dropped first: one compiled UNet in memory at a time."""
        if not lcm:
            if self.fast_unet is not None:
                self.fast_unet.release()
            return self.ov_pipe.unet
        if self.fast_unet is None or self.fast_unet.failed:
            return None
        self.ov_pipe.unet.release()
        if self.fast_unet.unet is None:
            release_memory()  # before the conversion's child takes its share
        return self.fast_unet.get(self.pipe.unet, self._lcm_source)

    def _scheduler(self, name: str, one_step: bool = False):
        cfg = self._base_scheduler_config
        if one_step:  # few-step models sample from the last timestep: 1 step starts at t=999, not t=1
            cfg = {**cfg, "timestep_spacing": "trailing"}
        if name == "default":
            return self._default_scheduler.from_config(cfg)
        return _SCHEDULER_FACTORIES[name](cfg)

    def _variant(self, base: StableDiffusionPipeline, kind: type, unet=None):
        """The image-to-image or inpainting pipeline over ``base``'s very modules, with ``unet`` in
        place of its own if given (made once: it costs nothing). With the model's 4-channel UNet,
        diffusers inpaints by blending the kept parts' latents back in after every step; an
        inpainting checkpoint's (9 channels) conditions on the mask instead (inpaint_model)."""
        key = (kind, id(base), id(unet) if unet is not None else None)
        pipe = self._variants.get(key)
        if pipe is None:
            pipe = kind(**{**base.components, **({"unet": unet} if unet is not None else {})},
                        requires_safety_checker=False)
            pipe.set_progress_bar_config(disable=True)
            self._variants[key] = pipe
        return pipe

    def generate(self, params: GenerationParams, seed: int, on_step, stop, init_image=None, mask=None):
        if mask is not None:
            self._inpainting_unet(params)  # first, so a checkpoint that fails to load is known to _pipe_for
        base = self._pipe_for(params)
        if init_image is None:
            pipe, inputs = base, {"width": params.width, "height": params.height}
        elif mask is None:  # the image's size is the job's: the model server resized it
            pipe, inputs = self._variant(base, StableDiffusionImg2ImgPipeline), {"image": init_image}
        else:
            pipe = self._variant(base, StableDiffusionInpaintPipeline, self._inpainting_unet(params))
            inputs = {"image": init_image, "mask_image": mask, "width": params.width, "height": params.height}
        if init_image is not None:
            inputs["strength"] = params.strength
        preset = PRESETS.get(params.preset)
        pipe.scheduler = self._scheduler(params.scheduler, bool(preset and preset.one_step))
        total = steps_run(params)
        last = time.monotonic()

        def step_end(pipe, index, timestep, tensors):
            nonlocal last
            now = time.monotonic()
            if index == 0:
                self.residency.release("text_encoder")  # prompts are encoded; not needed until the next job
            preview = latent_preview(tensors["latents"]) if params.preview else None
            # PNDM evaluates the UNet steps+1 times; report within the step count run.
            on_step(min(index + 1, total), now - last, preview)
            last = now
            mode = stop()
            if mode is StopMode.CANCEL:
                raise JobCancelledError()  # no VAE decode wasted on a cancelled image
            if mode is not None:
                pipe._interrupt = True  # diffusers skips the remaining steps, then decodes
            if self._release_unet and (mode is not None or index + 1 >= pipe.num_timesteps):
                # The UNet is done: its pages need not sit beside the VAE decode's activations.
                self.residency.release("unet")
            return tensors

        generator = torch.Generator("cpu").manual_seed(seed)
        # Only when asked: they patch a torch UNet, and the OpenVINO one runs jobs that ask neither.
        caching = DeepCache(pipe.unet, params.deep_cache).active() if params.deep_cache > 1 else nullcontext()
        merging = (TokenMerging(pipe.unet, params.token_merging, (params.height // 8, params.width // 8), seed).active()
                   if params.token_merging else nullcontext())
        wrapping = seamless(pipe.unet, pipe.vae) if params.tiling else nullcontext()
        with torch.inference_mode(), caching, merging, wrapping:
            out = pipe(
                prompt=params.prompt, negative_prompt=params.negative_prompt or None,
                num_inference_steps=params.steps, guidance_scale=params.guidance_scale, generator=generator,
                callback_on_step_end=step_end, output_type="pil", **inputs)
        image = out.images[0]
        # As A1111 does: the kept parts are the original pixels, not their trip through the VAE.
        return image if mask is None else Image.composite(image, init_image, mask)
