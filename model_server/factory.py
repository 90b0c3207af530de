"""Builds the configured pipeline. The engine (torch) is imported only when it is chosen, so the
fake pipeline (tests, compose smoke runs) works without torch installed."""

from __future__ import annotations

from model_server.loading.progress import LoadProgress
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
