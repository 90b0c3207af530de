"""The Pipeline interface over whichever model a job names, with the models kept in memory that fit.

A job naming a model that is not in memory loads it, through the same loader as the start (conversion
caches are per model). The models already loaded stay while the memory budget says the new one and the job's
peak fit beside them (``keep``, model_server.jobs.memory_budget) and MAX_RESIDENT_MODELS allows; otherwise the
least recently used go first (their memory handed back), so alternating between models that fit does not
reload, and an 8 GB machine still holds one Stable Diffusion model at a time. A job naming a model still in
memory makes it current at once. The switch is the job's: its progress says "loading model ...", and its
view records the time and the memory after (``ModelSwitch``). Jobs run in the order they came: grouping the
queue by model would save switches but could starve a client whose model nobody else asks for. A switch that
fails fails that job only; the next job loads what it needs.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable

from model_server import errors, memory
from model_server.control.catalog import ControlNets
from model_server.engine.plan import EngineFacts, needs_torch
from model_server.errors import Rejection
from model_server.families import FAMILIES
from model_server.finishing.faces import FaceRestorers
from model_server.finishing.upscalers import Upscalers
from model_server.loading.progress import LoadProgress
from model_server.models.catalog import Catalog, ModelSource
from model_server.models.loras import LoraFiles
from model_server.pipeline import SCHEDULERS, Pipeline, PipelineLoadError, max_steps, preset_unavailable
from protocol.errors import ErrorCode
from protocol.messages import GenerationParams, ModelList, ModelSwitch, StopMode, runs_diffusion
from protocol.presets import PRESETS
from protocol.upscalers import DEFAULT_UPSCALER

log = logging.getLogger(__name__)


class _ReportingProgress(LoadProgress):
    """A switch's load phases, also told to the job that waits for them."""

    def __init__(self, report: Callable[[str], None], model: str):
        super().__init__()
        self._report, self._model = report, model

    def start(self, phase: str, detail: str = "", total_bytes: int | None = None, done_bytes: int = 0) -> None:
        super().start(phase, detail, total_bytes, done_bytes)
        self._report(f"loading model {self._model}: {phase}")


class ModelSet:
    """The models and LoRAs a job may name, and the one model loaded now."""

    def __init__(self, catalog: Catalog, loras: LoraFiles,
                 load: Callable[[ModelSource, LoadProgress], Pipeline], upscalers: Upscalers | None = None,
                 faces: FaceRestorers | None = None, controlnets: ControlNets | None = None, max_resident: int = 1):
        self.catalog, self.loras, self._load = catalog, loras, load
        self.controlnets = controlnets or ControlNets("")
        self.upscalers = upscalers or Upscalers("", lambda: None)
        self.faces = faces or FaceRestorers("", lambda: None)
        # Written by the worker thread only; the IO thread reads it (pings, listings) while a switch runs,
        # so readers take one snapshot of the pair and never see a model without its pipeline.
        self._pair: tuple[Pipeline, ModelSource] | None = None
        # Every model in memory, the least recently used first (the current one last). The worker replaces it whole
        # (never changes it in place): the IO thread lists it for pings and the budget's predictions.
        self._resident: dict[str, tuple[Pipeline, ModelSource]] = {}
        self.max_resident = max(1, max_resident)
        # May the models in memory (names) stay while ``model`` loads and runs ``params``? Set by the memory budget;
        # by default none stays.
        self.keep: Callable[[ModelSource, GenerationParams, list[str]], bool] = lambda model, params, names: False
        # Told each load's model name and the RSS before and after it (the memory budget learns what a model takes).
        self.loaded_hook: Callable[[str, int, int], None] = lambda name, before, after: None

    def resident_names(self) -> list[str]:
        """The models in memory, the least recently used first."""
        return list(self._resident)

    @property
    def current(self) -> Pipeline | None:
        pair = self._pair
        return pair[0] if pair else None

    @property
    def loaded(self) -> ModelSource | None:
        pair = self._pair
        return pair[1] if pair else None

    # --- the Pipeline interface (what pings and admission ask) --------------------------------

    @property
    def model_id(self) -> str:
        """What images name as their model: the loaded one's name (the default's as its pipeline says)."""
        pair = self._pair
        if pair is None:
            return ""
        return pair[0].model_id if pair[1].default else pair[1].name

    def optimizations(self) -> dict:
        pair = self._pair
        if pair is None:
            return {}
        return {**pair[0].optimizations(), "model": pair[1].name}

    def schedulers(self) -> list[str]:
        current = self.current
        return current.schedulers() if current else list(SCHEDULERS)

    def max_steps(self, scheduler: str) -> int:
        current = self.current
        return current.max_steps(scheduler) if current else max_steps(scheduler)

    def unavailable_presets(self) -> dict[str, str]:
        """The loaded model's (what /health and /v1/presets show)."""
        return self.unavailable_for(self.loaded or self.catalog.default)

    def unavailable_for(self, model: ModelSource) -> dict[str, str]:
        """Presets ``model`` cannot run: the pipeline's (a missing LCM-LoRA) and the model's kind."""
        current = self.current
        out = dict(current.unavailable_presets()) if current else {}
        family = FAMILIES[model.family]
        for name, preset in PRESETS.items():
            if preset.one_step and not model.one_step:
                out[name] = f"{model.name} is not a one-step model (SD-Turbo, SDXL-Turbo, SDXS)"
            elif preset.lcm_lora and model.one_step:
                out[name] = f"the LCM-LoRA is for many-step models and {model.name} is a one-step model: use turbo"
            elif preset.lcm_lora and not family.lcm_lora:
                out[name] = f"no LCM-LoRA is published for {family.title}"
        return out

    def engine(self, params: GenerationParams) -> str:
        current = self.current
        return current.engine(params) if current else "not loaded yet"

    def engine_of(self, name: str, params: GenerationParams) -> str:
        """What would run ``params`` on the model ``name`` if it is in memory ("" if it is not)."""
        pair = self._resident.get(name)
        return pair[0].engine(params) if pair else ""

    def generate(self, params: GenerationParams, seed: int, on_step, stop, init_image=None, mask=None,
                 output: str = "image", control=None):
        extra = {"output": output} if output != "image" else {}  # only the hires fix asks for latents
        if control:
            extra["control"] = control
        return self.current.generate(params, seed, on_step, stop, init_image=init_image, mask=mask, **extra)

    def resize_latents(self, latents, width: int, height: int, upscaler: str):
        return self.current.resize_latents(latents, width, height, upscaler)

    # --- names ---------------------------------------------------------------------------------

    def listing(self) -> ModelList:
        pair = self._pair
        # A single-file checkpoint's hash is known once it was converted (the engine reports it).
        known = pair[0].optimizations().get("checkpoint_hash") if pair else None
        hashes = {pair[1].name: known} if known else {}
        return ModelList(models=self.catalog.entries(pair[1].name if pair else None, hashes, self.unavailable_for),
                         loras=self.loras.entries(pair[0].loaded_loras() if pair else set()),
                         upscalers=self.upscalers.entries(), face_restorers=self.faces.entries(),
                         controlnets=self.controlnets.entries(pair[0].loaded_controlnets() if pair else set()),
                         annotator_modules=self.controlnets.annotators.modules(),
                         face_detector=detector.name if (detector := self.faces.detector()) else "")

    def check(self, params: GenerationParams) -> None:
        """Raise a Rejection when the job names a model, LoRA, upscaler, face restorer or preset this server
        cannot run."""
        if params.face_restoration is not None:
            self.faces.resolve(params.face_restoration.model)
        if params.mode == "upscale":  # no model runs: only its upscaler matters
            self.upscalers.check(params.upscaler or DEFAULT_UPSCALER, latent=False)
            if params.upscaler_2:
                self.upscalers.check(params.upscaler_2, latent=False, field="upscaler_2")
        if not runs_diffusion(params):
            self.controlnets.check(params, "")
            return
        if params.hires is not None:
            self.upscalers.check(params.hires.upscaler, latent=True, field="hires")
        model = self.catalog.find(params.model)
        if model is None:
            raise errors.unknown_name("model", params.model, self.catalog.names(), "GET /v1/models", "model")
        unknown = [ref.name for ref in params.loras if self.loras.find(ref.name) is None]
        if unknown:
            raise errors.unknown_name("LoRA", unknown[0], self.loras.names(), "GET /v1/loras", "loras")
        if len({ref.name for ref in params.loras}) != len(params.loras):
            raise errors.invalid("a LoRA is named twice", "Name each LoRA once, with the weight you want.")
        self.controlnets.check(params, model.family)
        if model.openvino_only:  # what only torch weights run is refused now, not when the job starts
            refused = needs_torch(params, EngineFacts(family=model.family, openvino=True, torch_unet=False,
                                                      openvino_multiple=model.ir_multiple))
            if refused is not None:
                raise errors.invalid(str(refused), refused.hint, refused.field)
        unavailable = self.unavailable_for(model)
        if params.preset in unavailable:
            raise Rejection(preset_unavailable(params.preset, unavailable[params.preset], unavailable,
                                               ErrorCode.INVALID_PARAMS))

    # --- the worker's side ---------------------------------------------------------------------

    def load_default(self, progress: LoadProgress) -> None:
        before = memory.rss_bytes()
        self._pair = (self._load(self.catalog.default, progress), self.catalog.default)
        self._resident = {self.catalog.default.name: self._pair}
        # Read before the memory is handed back: the caller's load phases are still open (the worker releases it
        # after ending them), so this counts a little garbage too and errs high.
        self.loaded_hook(self.catalog.default.name, before, memory.rss_bytes())

    def prepare(self, params: GenerationParams, report: Callable[[str], None],
                stop: Callable[[], StopMode | None] = lambda: None) -> tuple[str, ModelSwitch | None, dict[str, str]]:
        """Load the job's model if another is loaded, set its LoRAs and make the parts it needs once
        (Pipeline.prepare_parts): (model name, the switch if there was one, LoRA name -> short hash).
        Raises PipelineLoadError when one cannot load, JobCancelledError when cancelled meanwhile."""
        model = self.catalog.find(params.model)
        if model is None:  # its file went away after the job was accepted
            raise PipelineLoadError(errors.unknown_name("model", params.model, self.catalog.names(),
                                                        "GET /v1/models").error)
        switch = None
        if self.loaded is None or model.name != self.loaded.name:
            switch = self._switch(model, params, report)
        loras: list[tuple[str, Path, float]] = []
        for ref in params.loras:
            path = self.loras.find(ref.name)
            if path is None:
                raise PipelineLoadError(errors.unknown_name("LoRA", ref.name, self.loras.names(),
                                                            "GET /v1/loras").error)
            loras.append((ref.name, path, ref.weight))
        hashes = {name: self.loras.short_hash(path) for name, path, _ in loras}
        self.current.apply_loras(loras)
        self.current.apply_controlnets(self._controlnet_folders(params))  # [] takes off what the last job had
        self.current.prepare_parts(params, report, stop)
        return model.name, switch, hashes

    def _controlnet_folders(self, params: GenerationParams) -> list:
        """The job's ControlNets and IP-Adapter (name, ControlModel), in unit order; PipelineLoadError for one gone
        since the submit."""
        models = []
        for unit in params.controls:
            found = self.controlnets.find(unit.model)
            if found is None:
                raise PipelineLoadError(errors.unknown_name("ControlNet", unit.model, self.controlnets.names(),
                                                            "GET /v1/controlnets").error)
            models.append((unit.model, found))
        return models

    def prepare_ahead(self, stop: Callable[[], bool]) -> bool:
        """Idle time: the loaded model's one-time parts (Pipeline.prepare_ahead)."""
        current = self.current
        return current.prepare_ahead(stop) if current is not None else True

    def _switch(self, model: ModelSource, params: GenerationParams,
                report: Callable[[str], None]) -> ModelSwitch | None:
        """Make ``model`` current: at once when it is in memory (None: nothing was loaded), else load it after
        dropping the least recently used models that would not leave it and the job room."""
        previous = self.loaded.name if self.loaded else ""
        resident = dict(self._resident)
        kept = resident.pop(model.name, None)
        if kept is not None:
            self._pair = kept
            self._resident = {**resident, model.name: kept}
            log.info("model %s is in memory: current again (was %s)", model.name, previous or "(none)")
            return None
        log.info("switching model: %s -> %s", previous or "(none)", model.name)
        report(f"loading model {model.name}")
        started = time.monotonic()
        dropped = []
        while resident and (len(resident) >= self.max_resident or not self.keep(model, params, list(resident))):
            name = next(iter(resident))  # the least recently used
            del resident[name]
            dropped.append(name)
            self._resident = dict(resident)
        if dropped:
            if self._pair is not None and self._pair[1].name in dropped:
                self._pair = None
            memory.release_memory()
            log.info("dropped from memory: %s (kept: %s)", ", ".join(dropped), ", ".join(self._resident) or "none")
        before = memory.rss_bytes()
        with _ReportingProgress(report, model.name).over() as progress:  # its phases end with the switch
            pair = (self._load(model, progress), model)
        self._pair = pair
        self._resident = {**resident, model.name: pair}
        memory.release_memory()
        self.loaded_hook(model.name, before, memory.rss_bytes())
        switch = ModelSwitch(from_model=previous, to_model=model.name, seconds=round(time.monotonic() - started, 2),
                             rss_bytes=memory.rss_bytes())
        log.info("model %s loaded in %.1f s (RSS %.2f GiB)", model.name, switch.seconds, switch.rss_bytes / 2**30)
        return switch
