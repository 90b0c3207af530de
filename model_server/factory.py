"""Builds the configured pipeline. The engine (torch) is imported only when it is chosen, so the
fake pipeline (tests, compose smoke runs) works without torch installed."""

from __future__ import annotations

import dataclasses
from typing import Callable

from model_server.control.annotator_files import AnnotatorFiles
from model_server.control.catalog import ControlNets
from model_server.loading.progress import LoadProgress
from model_server.models.catalog import Catalog, ModelSource
from model_server.models.loras import LoraFiles
from model_server.finishing.faces import FaceModels, FaceRestorers
from model_server.finishing.upscalers import Upscalers, UpscaleModels
from model_server.models.model_set import ModelSet
from model_server.pipeline import Pipeline
from model_server.settings import ModelServerSettings


def make_pipeline(settings: "ModelServerSettings", progress: LoadProgress | None = None) -> Pipeline:
    """Build the configured pipeline; slow for diffusers (downloads and loads the model, its phases
    reported to ``progress``)."""
    if settings.pipeline == "fake":
        from model_server.fake_pipeline import FakePipeline

        return FakePipeline(step_seconds=settings.fake_step_seconds, model_id=settings.model)
    if progress is not None:
        progress.start("loading", "starting the engine (torch, diffusers)")
    from model_server.engine.diffusers_pipeline import DiffusersPipeline

    return DiffusersPipeline.load(settings, progress)


def make_model_set(settings: ModelServerSettings, load: Callable[[], Pipeline] | None = None) -> ModelSet:
    """The configured models and LoRAs; ``load`` (tests) makes every model's pipeline instead of the
    configured backend."""
    catalog = Catalog(settings.model, settings.models, settings.models_dir, settings.limits)

    def load_model(model: ModelSource, progress: LoadProgress) -> Pipeline:
        if load is not None:
            return load()
        # The inpainting checkpoint's UNet pairs with the default model's text encoder and VAE only: other
        # models inpaint by themselves.
        inpaint = settings.inpaint_model if model.default else "none"
        return make_pipeline(dataclasses.replace(settings, model=model.source, inpaint_model=inpaint), progress)

    return ModelSet(catalog, LoraFiles(settings.lora_dir), load_model,
                    Upscalers(settings.upscaler_dir, lambda: make_upscale_models(settings)),
                    FaceRestorers(settings.face_restorer_dir, lambda: make_face_models(settings)),
                    ControlNets(settings.controlnet_dir, AnnotatorFiles(settings.annotator_dir)),
                    max_resident=settings.max_resident_models)


# Neighbouring tiles overlap by this many input pixels, blended with ramps: enough context that a
# network's receptive field does not show their edges.
UPSCALE_OVERLAP = 16


def make_upscale_models(settings: ModelServerSettings) -> UpscaleModels:
    """What runs upscaler model files: the engine's (torch), or the fake's beside the fake pipeline."""
    if settings.pipeline == "fake":
        from model_server.fake_pipeline import FakeUpscaleModels

        return FakeUpscaleModels(settings.upscale_tile, UPSCALE_OVERLAP)
    from model_server.engine.upscale_models import UpscaleModels as EngineUpscaleModels

    return EngineUpscaleModels(settings.upscale_tile, UPSCALE_OVERLAP)


def make_face_models(settings: ModelServerSettings) -> FaceModels:
    """What runs face restorer files: the engine's (torch), or the fake's beside the fake pipeline."""
    if settings.pipeline == "fake":
        from model_server.fake_pipeline import FakeFaceModels

        return FakeFaceModels()
    from model_server.engine.face_restore import FaceModels as EngineFaceModels

    return EngineFaceModels()
