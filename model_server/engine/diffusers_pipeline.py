"""The real pipeline: diffusers on the CPU, assembled per job from the job's plan (plan.py).

Loading is model_loader's; what runs a job is decided once, by ``plan.decide``, from the request
and the loaded model's facts (``facts``), after the parts the job needs that load on first use
(the LCM-LoRA, the tiny decoder, an inpainting checkpoint's UNet) are in. The pipeline object that
runs it is then assembled from that plan: the family's class for the job's mode (families/),
over the loaded modules with the UNet (OpenVINO, the fused fast one, the inpainting one) and the
decoder (full, tiny, or the full one in tiles) the plan names, and the job's ControlNets (controlnets.py, on OpenVINO
openvino_control.py) and IP-Adapter (ip_adapters.py); each such object is made once and costs nothing, as it
shares the modules. Per job it applies the preset's adapters, step caching (deepcache.py), token
merging and tiling, and releases idle mapped weights after their phase (residency.py).

Over 300 lines on purpose: the parts that load on first use, the assembly and the run share one
object's state (what is loaded is what the plan's facts say); deciding (plan.py), loading
(model_loader.py), samplers (schedulers.py) and previews (previews.py) live beside it.
"""

from __future__ import annotations

import logging
import tempfile
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
from PIL import Image

from model_server.engine import inpaint_model, model_loader, preset_parts
from model_server.engine.channels_last import to_channels_last
from model_server.engine.controlnets import LoadedControlNets, config_for, control_modes, pipeline_inputs
from model_server.engine.convert import ConversionStopped
from model_server.engine.deepcache import DeepCache
from model_server.engine.guidance_halves import guidance_halves
from model_server.engine.ip_adapters import LoadedIpAdapter
from model_server.engine.loras import LoraAdapters
from model_server.engine.model_loader import bf16_copy
from model_server.errors import redact
from model_server.engine.openvino_backend import FastUNet
from model_server.engine.openvino_compiled import release_buffers
from model_server.engine.pipeline_objects import pipeline_like
from model_server.engine.plan import IR_ONLY_LCM, EngineFacts, NeedsTorch, Plan, decide
from model_server.engine.previews import latent_preview
from model_server.engine.prompt_weighting import needs_weighting, weighted_embeddings
from model_server.engine.residency import MappedWeights
from model_server.engine.schedulers import make_scheduler
from model_server.engine.tiling import seamless
from model_server.engine.token_merging import TokenMerging
from model_server.engine.vae_tiles import decoded_on_torch, vae_tiles
from model_server.families import FAMILIES, Family
from model_server.loading.progress import LoadProgress
from model_server.memory import release_memory
from model_server.pipeline import (SCHEDULERS, JobCancelledError, PipelineLoadError, max_steps,
                                   preset_unavailable)
from model_server.settings import ModelServerSettings
from protocol.errors import ErrorCode
from protocol.messages import ErrorInfo, GenerationParams, StopMode, steps_run
from protocol.control import IP_ADAPTER, module_named
from protocol.presets import PRESETS
from protocol.upscalers import LATENT_UPSCALERS

log = logging.getLogger(__name__)


class DiffusersPipeline:
    """A loaded model on the CPU through diffusers: the Pipeline interface (model_server.pipeline)."""

    def __init__(self, pipe, model_id: str, opts: dict, settings: ModelServerSettings | None = None,
                 residency: MappedWeights | None = None, ov_pipe=None, fast_unet: FastUNet | None = None,
                 family: Family = FAMILIES["sd1"], control_ov=None, openvino_only: bool = False):
        self.pipe = pipe
        self.family = family
        self.ov_pipe = ov_pipe  # the same modules, the UNet on OpenVINO (openvino_backend)
        self.fast_unet = fast_unet  # the fast preset's OpenVINO UNet (LCM-LoRA fused), converted on first use
        self.control_ov = control_ov  # ControlNet jobs' OpenVINO UNet and ControlNets (openvino_control)
        self._control_wanted: list = []  # the next job's ControlNets (apply_controlnets), loaded in prepare_parts
        self.model_id = model_id
        self.openvino_only = openvino_only  # published as OpenVINO IR: no torch weights (openvino_ir_model)
        self._opts = opts
        self._settings = settings or ModelServerSettings(lcm_lora="none", tiny_vae="none",
                                                         release_idle_weights="none")
        self.residency = residency or MappedWeights(None)
        self._base_scheduler_config = pipe.scheduler.config
        # Kept apart: pipe.scheduler is replaced per job, so "default" must not read it back.
        self._default_scheduler = type(pipe.scheduler)
        self._lcm_source, self._vae_source, self._lcm_missing = preset_parts.resolve(self._settings, family)
        if openvino_only:
            self._lcm_source, self._lcm_missing = None, IR_ONLY_LCM
        self._fast_loaded = False
        self._tiny_vae_missing = ""  # why the tiny decoder could not load, once it was tried
        self._adapters = LoraAdapters(pipe, self._settings.lora_cache_mb * 2**20)
        self._job_loras: list = []  # the next jobs' LoRAs (apply_loras)
        self._controlnets = LoadedControlNets(pipe.unet.dtype, lambda: config_for(pipe.unet, self._cache()),
                                              self._settings.channels_last, self._settings.token)
        self._ip_adapter = LoadedIpAdapter(pipe, self._settings.token)
        self.fast_pipe = None  # the text-to-image pipeline over the same modules, the tiny decoder as its VAE
        self._variants: dict[tuple, object] = {}
        # The model's own weights as loaded (the memory budget scales its priors by them: model_server.jobs.footprint).
        parts = [getattr(pipe, name, None) for name in family.text_encoders + ("unet", "vae")]
        self._opts.setdefault("weights_mb", round(sum(p.numel() * p.element_size() for part in parts
                                                      if part is not None for p in part.parameters()) / 2**20, 1))
        self._opts["lcm_lora"] = False if self._lcm_missing else f"{self._lcm_source} (loads on first use)"
        self._opts["tiny_vae"] = (f"{self._vae_source} (loads on first use)"
                                  if self._vae_source and not self._lcm_missing else False)
        self._inpaint_source, why = inpaint_model.resolve(self._settings)
        if openvino_only and self._inpaint_source:  # its UNet is torch's: this model blends on its own UNet
            self._inpaint_source, why = None, "the model is OpenVINO IR only"
        self._inpaint_unet = None
        self._opts["inpaint_model"] = (f"{self._inpaint_source} (loads on the first inpaint job)"
                                       if not why else f"none: the model itself blends ({why})")

    @classmethod
    def load(cls, settings: ModelServerSettings, progress: LoadProgress | None = None) -> "DiffusersPipeline":
        """Download (if needed), convert (once), load and compile the model, each phase reported to
        ``progress``; the last phase ends with the load."""
        with (progress or LoadProgress()).over() as phases:
            m = model_loader.load(settings, phases)
        return cls(m.pipe, settings.model, m.opts, m.settings, m.residency, m.ov_pipe, m.fast_unet, m.family,
                   m.control_ov, m.openvino_only)

    def _cache(self) -> Path:
        """Where made files go (SD_CACHE_DIR; a temporary folder when there is none)."""
        return Path(self._settings.cache_dir or tempfile.gettempdir())

    # --- deciding -----------------------------------------------------------------------------

    def facts(self) -> EngineFacts:
        """What the loaded model has now, as the plan reads it."""
        fused = ("none" if self.ov_pipe is None or self.fast_unet is None else "failed" if self.fast_unet.failed
                 else "pending" if self.fast_unet.pending else "ready")
        control = self.control_ov
        control_unet = ("none" if control is None else "failed" if control.failed else "pending" if control.pending
                        else "ready")
        return EngineFacts(family=self.family.name, dtype=self._opts["dtype"], openvino=self.ov_pipe is not None,
                           torch_unet=not self.openvino_only,
                           control_unet=control_unet,
                           control_failed=frozenset(control.net_failed) if control is not None else frozenset(),
                           control_int8=control is not None and control.int8_weights,
                           int8=str(self._opts.get("openvino_int8", "")), fused_lcm=fused,
                           lcm_missing=self._lcm_missing, tiny_vae_missing=self._tiny_vae_missing,
                           inpaint_checkpoint=self._inpaint_source is not None,
                           release_unet=self._settings.release_idle_weights == "all",
                           vae_tile_above=self._settings.vae_tile_above,
                           openvino_multiple=8 * 2 ** (len(self.pipe.unet.config.down_block_types) - 1))

    def plan(self, params: GenerationParams) -> Plan:
        try:
            return decide(params, self.facts())
        except NeedsTorch as exc:  # a model published as OpenVINO IR only: said in the job (or at submit)
            raise PipelineLoadError(ErrorInfo(code=ErrorCode.INVALID_PARAMS, message=str(exc), hint=exc.hint,
                                              field=exc.field)) from None

    def engine(self, params: GenerationParams) -> str:
        return self.plan(params).engine

    # --- the Pipeline interface ---------------------------------------------------------------

    def optimizations(self):
        loras = {"loras_loaded": len(self._adapters.loaded()), "loras_mb": round(self._adapters.bytes / 2**20, 1)}
        compiled = [m.report() for m in (self.ov_pipe and self.ov_pipe.unet, self.fast_unet and self.fast_unet.unet,
                                         self.control_ov and self.control_ov.unet, self.pipe.vae)
                    if hasattr(m, "report")]
        control = self.control_ov.info if self.control_ov is not None else {}
        fast = self.fast_unet.info if self.fast_unet is not None else {}
        return {**self._opts, **loras, **fast, **control, **{k: v for report in compiled for k, v in report.items()}}

    def schedulers(self) -> list[str]:
        return list(SCHEDULERS)

    def max_steps(self, scheduler: str) -> int:
        return max_steps(scheduler)

    def unavailable_presets(self) -> dict[str, str]:
        if not self._lcm_missing:
            return {}
        return {name: f"no LCM-LoRA ({self._lcm_missing})" for name, p in PRESETS.items() if p.lcm_lora}

    def apply_loras(self, loras) -> None:
        self._job_loras = list(loras)  # attached when the job's pipeline is assembled, with the preset's adapter

    def loaded_loras(self) -> set[str]:
        return self._adapters.loaded()

    def apply_controlnets(self, controlnets) -> None:
        self._control_wanted = list(controlnets)  # loaded by prepare_parts, on the engine the job's plan names

    def loaded_controlnets(self) -> set[str]:
        return self._controlnets.loaded() | ({self._ip_adapter.name} if self._ip_adapter.name else set())

    def prepare_parts(self, params: GenerationParams, report, stop) -> None:
        """A fast job on OpenVINO needs the UNet with the LCM-LoRA fused in, converted once (about a
        minute), and a ControlNet job its control UNet and ControlNets: said to the job while it waits,
        and stopped by its cancel. A ControlNet job's ControlNets are loaded here, for the engine it runs on."""
        self._prepare_controls(params, report, stop)
        plan = self.plan(params)
        if not plan.converts_first:
            return
        self.load_fast_parts()
        if self._lcm_missing:
            return
        report("converting the fast preset's UNet to OpenVINO, once: about a minute; later fast jobs start at once")
        try:
            self.fast_unet.convert(self._lcm_source, stop=lambda: stop() is StopMode.CANCEL)
        except ConversionStopped:
            raise JobCancelledError() from None

    def _prepare_controls(self, params: GenerationParams, report, stop) -> None:
        """The job's ControlNets loaded for its engine (converted first on OpenVINO) and its IP-Adapter attached;
        an IP-Adapter the job does not name is taken off the UNet."""
        nets = [(name, model) for name, model in self._control_wanted if model.kind != IP_ADAPTER]
        adapter = next(((name, model) for name, model in self._control_wanted if model.kind == IP_ADAPTER),
                       (None, None))
        if self._ip_adapter.use(*adapter):
            self._drop_control_variants()
        if not nets:
            return
        control, cancelled = self.control_ov, (lambda: stop() is StopMode.CANCEL)
        try:
            if self.plan(params).unet == "openvino-control":
                control.prepare_unet(report, cancelled)
                for name, model in nets:
                    control.prepare_net(name, model.path, report, cancelled)
        except ConversionStopped:
            raise JobCancelledError() from None
        on_openvino = self.plan(params).unet == "openvino-control"  # a conversion that failed leaves it on torch
        self._controlnets.apply([(name, model.path) for name, model in nets], control.net if on_openvino else None)

    def _drop_control_variants(self) -> None:
        """Forget the pipelines made with ControlNets or an IP-Adapter: they hold modules that changed."""
        for key in [k for k in self._variants if k[0] == "control"]:
            del self._variants[key]

    def convert_controls(self, nets: list, report) -> None:
        """fetch --convert: the control UNet and ControlNets ``nets`` ((name, control.catalog.ControlModel)) made
        into OpenVINO IR now, as the first ControlNet job would (nothing on torch)."""
        if self.control_ov is None or not nets:
            return
        self.control_ov.prepare_unet(report, lambda: False)
        for name, model in nets:
            self.control_ov.prepare_net(name, model.path, report, lambda: False)

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

    # --- parts that load on first use ---------------------------------------------------------

    def load_fast_parts(self) -> None:
        """Attach the LCM-LoRA and load the tiny decoder (the first fast job does this; later ones reuse them)."""
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
        """Load the tiny decoder once (the fast and turbo presets decode with it): "" or why it is not there."""
        if self.fast_pipe is not None or self._tiny_vae_missing:
            return self._tiny_vae_missing
        tiny_vae, why = preset_parts.load_tiny_vae(self._vae_source, self._settings, self.pipe.unet.dtype)
        if tiny_vae is None:
            self._tiny_vae_missing, self._opts["tiny_vae"] = why, False
            return why
        if self._settings.channels_last:
            tiny_vae.to(memory_format=torch.channels_last)
        self.fast_pipe = pipeline_like(self.family.pipelines["txt2img"], self.pipe, vae=tiny_vae)
        self._opts["tiny_vae"] = self._vae_source
        return ""

    def _load_inpaint_unet(self) -> None:
        """The inpainting checkpoint's UNet, loaded on the first job that plans it; one that fails to
        load is said in /health and later inpainting blends with the model."""
        if self._inpaint_unet is not None or self._inpaint_source is None:
            return
        started = time.monotonic()
        try:
            unet, weights, folder = inpaint_model.load_unet(self._inpaint_source, self._settings,
                                                            self.pipe.unet.dtype, bf16_copy)
        except Exception as exc:  # inpainting goes on with the model, said in /health
            reason = redact(f"{type(exc).__name__}: {str(exc)[:300]}", self._settings.token)
            log.warning("could not load the inpainting checkpoint %s (%s); inpainting blends with the model",
                        self._inpaint_source, reason)
            self._opts["inpaint_model"] = f"none: {self._inpaint_source} failed to load ({reason})"
            self._inpaint_source = None
            return
        if self._settings.channels_last:
            to_channels_last(unet, folder)  # read from the file where it can, so the pages stay mapped
        self._inpaint_unet = unet
        self._opts["inpaint_model"] = self._inpaint_source
        self._opts["inpaint_model_weights"] = weights["weights"]
        self._opts["inpaint_model_load_seconds"] = round(time.monotonic() - started, 2)
        log.info("inpainting checkpoint %s ready in %.1f s", self._inpaint_source,
                 self._opts["inpaint_model_load_seconds"])

    def _load_parts(self, params: GenerationParams) -> None:
        """Load what this job's plan would use and is not in yet, so the plan is decided on what is there."""
        preset = PRESETS.get(params.preset)
        if preset and preset.lcm_lora:
            self.load_fast_parts()
            if self._lcm_missing:
                raise PipelineLoadError(preset_unavailable(params.preset, self._lcm_missing,
                                                           self.unavailable_presets(), ErrorCode.PIPELINE_ERROR))
        if preset and preset.tiny_vae:
            self._load_tiny_decoder()
        if self.plan(params).inpaint_checkpoint:
            self._load_inpaint_unet()

    # --- assembling and running -----------------------------------------------------------------

    def _openvino_unet(self, plan: Plan):
        """The OpenVINO UNet the plan names: the fast preset's (LCM-LoRA fused; converted now the first
        time) or the model's. The other one's compiled copy is dropped first: one compiled UNet at a time."""
        if self.control_ov is not None and plan.unet != "openvino-control":
            self.control_ov.release()
        if plan.unet == "openvino-control":
            self.ov_pipe.unet.release()
            if self.fast_unet is not None:
                self.fast_unet.release()
            return self.control_ov.get_unet(self.pipe.unet)
        if plan.unet == "openvino":
            if self.fast_unet is not None:
                self.fast_unet.release()
            return self.ov_pipe.unet
        self.ov_pipe.unet.release()
        if self.fast_unet.unet is None:
            release_memory()  # before the conversion's child takes its share
        return self.fast_unet.get(self.pipe.unet, self._lcm_source)

    def _assemble(self, plan: Plan):
        """The pipeline object that runs ``plan``, its adapters switched as the plan says."""
        self._adapters.use(self._job_loras, [(preset_parts.ADAPTER, 1.0)] if plan.lcm else [],
                           others_attached=self._fast_loaded)
        unet = self._openvino_unet(plan) if plan.unet != "torch" else None
        if plan.inpaint_checkpoint:
            unet = self._inpaint_unet
        base = self.fast_pipe if plan.decoder == "tiny" else self.pipe
        if plan.controls or plan.ip_adapter:
            # The family's ControlNet class (or its plain one) over the same modules, the job's ControlNets and the
            # IP-Adapter's image encoder in it.
            key = ("control", plan.mode, id(base), id(unet), self._controlnets.key() if plan.controls else (),
                   self._ip_adapter.name if plan.ip_adapter else None)
            if key not in self._variants:
                self._drop_control_variants()  # their ControlNets may be gone
                parts = {"controlnet": self._controlnets.model()} if plan.controls else {}
                if plan.ip_adapter:
                    parts.update(image_encoder=self.pipe.image_encoder, feature_extractor=self.pipe.feature_extractor)
                classes = self.family.control_pipelines if plan.controls else self.family.pipelines
                self._variants[key] = pipeline_like(classes[plan.mode], base, **parts,
                                                    **({"unet": unet} if unet is not None else {}))
            return self._variants[key]
        if plan.mode == "txt2img" and unet is None:
            return base
        if plan.mode == "txt2img" and plan.unet == "openvino" and plan.decoder == "full":
            return self.ov_pipe
        key = (plan.mode, id(base), id(unet))
        if key not in self._variants:
            self._variants[key] = pipeline_like(self.family.pipelines[plan.mode], base,
                                                **({"unet": unet} if unet is not None else {}))
        return self._variants[key]

    @contextmanager
    def _released_after_encoding(self, pipe, parts):
        """The text encoders' pages released as soon as the prompts are encoded, before the first UNet step:
        the encoders (1.6 GB for SDXL in bf16) are then never resident beside the UNet."""
        if not parts or not self.residency.enabled:
            yield
            return
        encode = pipe.encode_prompt

        def encode_then_release(*args, **kwargs):
            out = encode(*args, **kwargs)
            for part in parts:
                self.residency.release(part)
            return out

        pipe.encode_prompt = encode_then_release
        try:
            yield
        finally:
            del pipe.encode_prompt  # back to the class's method

    def resize_latents(self, latents, width: int, height: int, upscaler: str):
        """The hires fix's latent upscalers (A1111's "Latent ..."): the latents resized to the second pass's size."""
        mode, antialias = LATENT_UPSCALERS[upscaler]
        # In float32: torch has no bf16 kernel for antialiased bicubic on the CPU, and the latents are small.
        return torch.nn.functional.interpolate(latents.float(), size=(height // 8, width // 8), mode=mode,
                                               antialias=antialias).to(latents.dtype)

    def generate(self, params: GenerationParams, seed: int, on_step, stop, init_image=None, mask=None,
                 output: str = "image", control=None):
        self._load_parts(params)
        plan = self.plan(params)
        if plan.unet == "openvino-lcm" and self._openvino_unet(plan) is None:
            plan = self.plan(params)  # the fused UNet failed to convert: torch runs it, as the plan now says
        pipe = self._assemble(plan)
        inputs = {"image": init_image} if init_image is not None else {}
        if plan.mode != "img2img":  # image-to-image takes the image's size: the model server resized it
            inputs.update(width=params.width, height=params.height)
        if mask is not None:
            inputs["mask_image"] = mask
        if init_image is not None:
            inputs["strength"] = params.strength
        nets = [(unit, made) for unit, made in zip(params.controls, control or ())
                if module_named(unit.module) != IP_ADAPTER]
        if nets:
            inputs.update(pipeline_inputs(params, nets, plan.mode))
        if plan.ip_adapter:
            unit, made = next((unit, made) for unit, made in zip(params.controls, control)
                              if module_named(unit.module) == IP_ADAPTER)
            inputs["ip_adapter_image"] = made.image
            pipe.set_ip_adapter_scale(float(unit.weight))
        pipe.scheduler = make_scheduler(plan.scheduler, self._base_scheduler_config, self._default_scheduler,
                                        plan.trailing)
        total = steps_run(params)
        released_after = {phase: [part for p, part in plan.release if p == phase] for phase, _ in plan.release}
        last = time.monotonic()

        def step_end(pipe, index, timestep, tensors):
            nonlocal last
            now = time.monotonic()
            preview = latent_preview(tensors["latents"], self.family) if params.preview else None
            # PNDM evaluates the UNet steps+1 times; report within the step count run.
            on_step(min(index + 1, total), now - last, preview)
            last = now
            mode = stop()
            if mode is StopMode.CANCEL:
                raise JobCancelledError()  # no VAE decode wasted on a cancelled image
            if mode is not None:
                pipe._interrupt = True  # diffusers skips the remaining steps, then decodes
            if mode is not None or index + 1 >= pipe.num_timesteps:
                # The UNet is done: its pages need not sit beside the VAE decode's activations, nor (OpenVINO)
                # its compiled activations' buffers.
                for part in released_after.get("denoising", ()):
                    self.residency.release(part)
                release_buffers()
            return tensors

        generator = torch.Generator("cpu").manual_seed(seed)
        # Only when asked: they patch a torch UNet, and the OpenVINO one runs jobs that ask neither.
        caching = DeepCache(pipe.unet, plan.deep_cache).active() if plan.deep_cache else nullcontext()
        merging = (TokenMerging(pipe.unet, plan.token_merging, (params.height // 8, params.width // 8), seed).active()
                   if plan.token_merging else nullcontext())
        wrapping = seamless(pipe.unet, pipe.vae) if plan.tiling else nullcontext()
        on_torch = decoded_on_torch(pipe.vae) if output == "upscale" else nullcontext()
        encoders = self._released_after_encoding(pipe, released_after.get("encoding", ()))
        modes = (control_modes([pipe.controlnet] if plan.controls == 1 else list(pipe.controlnet.nets),
                               [unit.control_mode for unit, _ in nets], params.guidance_scale > 1,
                               [made.region for _, made in nets])
                 if plan.controls else nullcontext())
        with torch.inference_mode(), caching, merging, wrapping, vae_tiles(pipe.vae, plan.decoder == "tiled"), \
                encoders, guidance_halves(pipe.unet, plan.guidance_halves), on_torch, modes:
            # A1111's emphasis and long prompts (engine/prompt_weighting.py); a plain prompt as diffusers encodes it.
            prompts = (weighted_embeddings(pipe, params.prompt, params.negative_prompt)
                       if needs_weighting(pipe, params.prompt, params.negative_prompt)
                       else {"prompt": params.prompt, "negative_prompt": params.negative_prompt or None})
            out = pipe(
                **prompts, num_inference_steps=params.steps, guidance_scale=params.guidance_scale, generator=generator,
                callback_on_step_end=step_end, output_type="latent" if output == "latents" else "pil", **inputs)
        if output == "latents":
            return out.images  # the hires fix's first pass: no decode
        image = out.images[0]
        # As A1111 does: the kept parts are the original pixels, not their trip through the VAE.
        return image if mask is None else Image.composite(image, init_image, mask)

