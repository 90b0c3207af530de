"""Which files of a hub repository diffusers loads for a Stable Diffusion pipeline.

The choice is diffusers' own (``DiffusionPipeline.download`` picks the components' safetensors,
no fp16 or flax variants, the configs and the tokenizer): it is captured where diffusers hands it
to ``snapshot_download``, so our resumable download (model_server.loading.download) fetches
exactly the files diffusers would, and diffusers then finds them all in the cache.
"""

from __future__ import annotations

from diffusers import StableDiffusionPipeline
from diffusers.pipelines import pipeline_utils


class _Captured(Exception):
    def __init__(self, kwargs: dict):
        super().__init__("captured")
        self.kwargs = kwargs


def pipeline_patterns(repo: str, revision: str | None, token: str | None) -> tuple[list | None, list | None] | None:
    """diffusers' (allow, ignore) patterns for a Stable Diffusion pipeline in ``repo``; None when
    diffusers finds the pipeline complete in the cache (or may only look there: offline)."""
    real = pipeline_utils.snapshot_download

    def capture(*args, **kwargs):
        if kwargs.get("local_files_only"):  # offline: nothing to plan, the cache decides
            return real(*args, **kwargs)
        raise _Captured(kwargs)

    # Swapped for this one call (the load runs on one thread, before any job): diffusers keeps
    # its choice of files inside download(), and this is the one place it hands it over.
    pipeline_utils.snapshot_download = capture
    try:
        StableDiffusionPipeline.download(repo, revision=revision, token=token)
        return None
    except _Captured as captured:
        return captured.kwargs.get("allow_patterns"), captured.kwargs.get("ignore_patterns")
    finally:
        pipeline_utils.snapshot_download = real


