"""Which files of a hub repository diffusers loads for a Stable Diffusion pipeline.

The choice is diffusers' own (``DiffusionPipeline.download`` picks the components' safetensors,
no fp16 or flax variants, the configs and the tokenizer): it is captured where diffusers hands it
to ``snapshot_download``, so our resumable download (model_server.loading.download) fetches
exactly the files diffusers would, and diffusers then finds them all in the cache.

A repository published as OpenVINO IR only (optimum-intel's layout, the OpenVINO organisation's ``*-ov``
models: engine/openvino_ir_model) has no weights diffusers would pick: its IRs, configs, tokenizers and
scheduler are what it needs (``IR_PATTERNS``).
"""

from __future__ import annotations

from pathlib import Path

from diffusers import StableDiffusionPipeline
from diffusers.pipelines import pipeline_utils
from huggingface_hub import HfApi, constants, try_to_load_from_cache

from model_server.families.detect import IR_FILE, ir_only_layout, openvino_only

IR_PATTERNS = ["model_index.json", "openvino_config.json", "*/config.json", f"*/{IR_FILE}",
               f"*/{Path(IR_FILE).with_suffix('.bin')}", "scheduler/*", "tokenizer/*", "tokenizer_2/*"]


class _Captured(Exception):
    def __init__(self, kwargs: dict):
        super().__init__("captured")
        self.kwargs = kwargs


def pipeline_patterns(repo: str, revision: str | None, token: str | None) -> tuple[list | None, list | None] | None:
    """diffusers' (allow, ignore) patterns for a Stable Diffusion pipeline in ``repo``; None when
    diffusers finds the pipeline complete in the cache (or may only look there: offline). For a repository
    of OpenVINO IR only, its files (``IR_PATTERNS``)."""
    if constants.HF_HUB_OFFLINE:
        index = try_to_load_from_cache(repo, "model_index.json", revision=revision)
        if isinstance(index, str) and openvino_only(Path(index).parent):
            return None  # cached (diffusers' own check would look for torch weights it does not have)
    else:
        if ir_only_layout(HfApi(token=token).list_repo_files(repo, revision=revision, token=token)):
            return IR_PATTERNS, None
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


