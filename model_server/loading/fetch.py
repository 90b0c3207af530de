"""``python -m model_server fetch``: download, ahead of time, everything the configured model and
presets need from the hub, with the same resumable download and progress lines as a start.

Run it where there is network (or into the volume a container will mount) so that the first
start, or an offline one (``HF_HUB_OFFLINE=1``), finds every file in the cache. It reads the
model server's settings from the environment (``SD_MODEL``, the hub ids in ``SD_MODELS``, ``SD_LCM_LORA``,
``SD_TINY_VAE``, ``SD_INPAINT_MODEL``, ``HF_TOKEN``, ``HF_HOME``) and exits non-zero with what went wrong and what
to do. With ``--convert`` it then makes, on this machine, the one-time conversions a start and the
first jobs would make (the bf16 copy, the OpenVINO IRs, the fast preset's UNet with the LCM-LoRA
fused in, and on OpenVINO the UNet for ControlNet jobs and the family's ControlNets in CONTROLNET_DIR) into
SD_CACHE_DIR: they depend on the CPU, so run it on the machine (or in the container,
with the volumes) that serves. With ``--annotators`` it downloads the control preprocessors' annotator
models into ANNOTATOR_DIR (all of them, or those named: ``--annotators hed depth_anything``), skipping
those already there.
"""

from __future__ import annotations

import argparse
import logging
import sys

from model_server.control.annotator_files import ANNOTATORS, AnnotatorFiles
from model_server.errors import PipelineLoadError, load_error, redact
from model_server.loading.download import ensure_files, ensure_pipeline
from model_server.loading.hub_files import is_hub_id
from model_server.loading.progress import LoadProgress
from model_server.models.catalog import parse_list
from model_server.settings import ModelServerSettings

log = logging.getLogger("model_server.fetch")


def wanted(settings: ModelServerSettings) -> list[tuple[str, str, list[str] | None]]:
    """(what, hub id, the files' patterns, or None for a whole pipeline) for each hub download the
    configuration needs; local directories and switched-off parts need none."""
    from model_server.engine import inpaint_model, preset_parts  # torch: only for the command, not on import

    items = [("model", settings.model, None)]
    items += [(f"model {model.name} (SD_MODELS)", model.source, None) for model in parse_list(settings.models)]
    lora, vae, _ = preset_parts.resolve(settings)
    items.append(("the fast preset's LCM-LoRA", lora, preset_parts.LORA_FILES))
    items.append(("the fast preset's decoder (TAESD)", vae, preset_parts.TAESD_FILES))
    inpaint, _ = inpaint_model.resolve(settings)
    items.append(("the inpainting checkpoint's UNet", inpaint, inpaint_model.UNET_FILES))
    return [(what, source, patterns) for what, source, patterns in items if source and is_hub_id(source)]


def fetch(settings: ModelServerSettings, progress: LoadProgress) -> None:
    from model_server.engine.pipeline_files import pipeline_patterns

    for what, repo, patterns in wanted(settings):
        log.info("%s: %s", what, repo)
        revision = settings.revision if what == "model" else None
        if patterns is None:
            ensure_pipeline(repo, revision, settings.token, progress, settings.download_free_margin_mb,
                            pipeline_patterns)
        else:
            ensure_files(repo, revision, settings.token, progress, settings.download_free_margin_mb, patterns)
        log.info("%s: in the cache", what)


def convert(settings: ModelServerSettings, progress: LoadProgress) -> None:
    """The default model's one-time conversions for this machine: a whole load (which converts what it
    maps), then the fast preset's parts and its fused OpenVINO UNet, and on OpenVINO the UNet for ControlNet
    jobs and each ControlNet in CONTROLNET_DIR made for the model's family."""
    from model_server.control.catalog import ControlNets
    from model_server.engine.diffusers_pipeline import DiffusersPipeline

    pipe = DiffusersPipeline.load(settings, progress)
    pipe.load_fast_parts()
    pipe.prepare_ahead(lambda: False, always=True)
    catalog, family = ControlNets(settings.controlnet_dir), pipe.optimizations().get("family")
    nets = [(name, model) for name in catalog.names()
            if (model := catalog.find(name)).kind == "controlnet" and model.family == family]
    pipe.convert_controls(nets, log.info)


def fetch_annotators(settings: ModelServerSettings, names: list[str]) -> None:
    """The annotators ``names`` (all when empty) into ANNOTATOR_DIR, from their hub repositories: a file as
    lllyasviel/Annotators keeps it, or a depth model's folder (its config, processor and safetensors)."""
    from pathlib import Path

    from huggingface_hub import hf_hub_download, snapshot_download

    from model_server.loading.download import httpx2

    if not settings.annotator_dir:
        raise load_error("ANNOTATOR_DIR is not set", "Set it to the folder the model server reads annotator models "
                         "from, then fetch again.")
    folder = Path(settings.annotator_dir)
    folder.mkdir(parents=True, exist_ok=True)
    have = AnnotatorFiles(str(folder)).found()
    for name in names or list(ANNOTATORS):
        annotator = ANNOTATORS[name]
        if name in have:
            log.info("annotator %s: already there (%s)", name, have[name].relative_to(folder))
            continue
        log.info("annotator %s: %s from %s", name, annotator.file or "a folder", annotator.repo)
        try:
            if annotator.file:
                hf_hub_download(annotator.repo, annotator.file, local_dir=folder, token=settings.token)
            else:
                snapshot_download(annotator.repo, local_dir=folder / annotator.folder,
                                  token=settings.token, allow_patterns=["*.json", "*.safetensors"])
        except (OSError, ValueError, httpx2.HTTPError) as exc:  # the hub's errors are OSErrors
            raise load_error(f"could not download the annotator {name} from {annotator.repo}: "
                             f"{redact(f'{type(exc).__name__}: {str(exc)[:200]}', settings.token)}",
                             "Run it where the hub is reachable (HF_HUB_OFFLINE unset; HF_TOKEN if it asks), or copy "
                             f"{annotator.file or 'the folder'} from {annotator.repo} into ANNOTATOR_DIR yourself.") \
                from None
        log.info("annotator %s: in %s", name, folder)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m model_server fetch", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--convert", action="store_true", help="then make this machine's one-time conversions too")
    ap.add_argument("--annotators", nargs="*", metavar="NAME", choices=list(ANNOTATORS),
                    help="only download annotator models into ANNOTATOR_DIR: all, or those named "
                    f"({', '.join(ANNOTATORS)})")
    args = ap.parse_args(argv)
    try:
        settings = ModelServerSettings.from_env()
    except (ValueError, OSError) as exc:
        log.error("bad configuration: %s", exc)
        return 2
    import huggingface_hub.utils

    huggingface_hub.utils.disable_progress_bars()  # our progress lines instead of a redrawn bar
    try:
        if args.annotators is not None:
            fetch_annotators(settings, args.annotators)
            log.info("the annotators are in ANNOTATOR_DIR (%s)", settings.annotator_dir)
            return 0
        if wanted(settings):
            fetch(settings, LoadProgress())
        else:
            log.info("nothing to download: SD_MODEL=%s and the presets' parts are local or switched off",
                     settings.model)
        if args.convert:
            convert(settings, LoadProgress())
    except PipelineLoadError as exc:
        log.error("fetch failed: %s", exc.error.message)
        log.error("what to do: %s", exc.error.hint)
        return 1
    log.info("everything the configuration needs is in the cache; %s", "converted for this machine" if args.convert
             else "the first start converts it once (or run fetch --convert here)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
