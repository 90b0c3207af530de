"""Single-file checkpoints (one ``.safetensors`` in the original LDM layout, as people download them)
converted once to a diffusers folder, in a child process.

A single file holds weights only; its family (SD 1.x, 2.x, SDXL) is read from its tensor names
(families/detect.py) and the component configs come from ``SD_SINGLE_FILE_CONFIG``: a diffusers
folder or hub id of the same architecture (one for all, or one per family: ``sd1=DIR,sdxl=DIR``),
or ``auto``, where diffusers picks a hub config by the checkpoint's keys. After the conversion the copy under
``SD_CACHE_DIR/checkpoints`` is loaded like any diffusers folder, so the bf16 copy, the OpenVINO IR,
weight release and every preset work on it unchanged, and later starts skip the conversion. The
copy is keyed by the file's path, size and modification time: a replaced file is converted again.

    python -m model_server.engine.single_file FILE DEST [--config CONFIG]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path

from model_server.engine.convert import MARKER, converted, finish, run_once
from model_server.errors import load_error, redact_paths
from model_server.families import FAMILIES, detect
from model_server.loading.progress import LoadProgress
from model_server.settings import ModelServerSettings

log = logging.getLogger(__name__)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def checkpoint_hash(folder: str | Path) -> str | None:
    """A1111's short hash (sha256, 10 hex) of the single file a converted folder came from."""
    try:
        marker = json.loads((Path(folder) / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    sha = marker.get("sha256") if isinstance(marker, dict) else None
    return sha[:10] if isinstance(sha, str) else None


def diffusers_folder(path: str, settings: ModelServerSettings, progress: LoadProgress) -> str:
    """The diffusers copy of the checkpoint at ``path``, converted now if there is none yet."""
    file = Path(path)
    try:
        stat = file.stat()
    except OSError:
        raise load_error(f"the checkpoint {file.name} does not exist",
                         "Check SD_MODELS / SD_MODELS_DIR: the file may have been moved.") from None
    config = config_for(settings.single_file_config, detect(str(file), "single_file"))
    key = hashlib.sha256(f"{file.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\0{config}".encode()).hexdigest()[:12]
    dest = Path(settings.cache_dir) / "checkpoints" / f"{file.stem}-{key}"
    if converted(dest):
        return str(dest)
    progress.start("converting", f"{file.name} to a diffusers folder, once (later loads reuse it)")
    env = dict(os.environ, **({"HF_TOKEN": settings.token} if settings.token else {}))
    seconds, why = run_once(f"converting the checkpoint {file.name}",
                            ["model_server.engine.single_file", str(file), str(dest), "--config", config], dest,
                            env=env, clean=redact_paths)
    if seconds is None:
        raise load_error(f"could not convert the single-file checkpoint {file.name}: {why}",
                         "Set SD_SINGLE_FILE_CONFIG to a diffusers folder or hub id of the same architecture (e.g. "
                         "stable-diffusion-v1-5/stable-diffusion-v1-5 for an SD 1.x checkpoint, or per family: "
                         "sd1=...,sdxl=stabilityai/stable-diffusion-xl-base-1.0): offline, diffusers cannot fetch "
                         "the config it would pick, and a file of another architecture does not fit.")
    return str(dest)


def config_for(setting: str, family: str) -> str:
    """The config source ``SD_SINGLE_FILE_CONFIG`` gives a checkpoint of ``family``: one value for all,
    or ``family=SOURCE`` entries (a family not named: auto)."""
    if "=" not in setting:
        return setting.strip() or "auto"
    entries = dict(item.split("=", 1) for item in setting.split(",") if "=" in item)
    return {name.strip(): value.strip() for name, value in entries.items()}.get(family) or "auto"


def convert(file: Path, dest: Path, config: str) -> float:
    import diffusers

    started = time.monotonic()
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    kwargs = {"config": config} if config != "auto" else {}
    family = FAMILIES[detect(str(file), "single_file")]
    pipe = getattr(diffusers, family.pipelines["txt2img"]).from_single_file(
        str(file), token=os.environ.get("HF_TOKEN") or None,
        **({"safety_checker": None, "requires_safety_checker": False} if family.name != "sdxl" else {}),
        local_files_only=bool(os.environ.get("HF_HUB_OFFLINE")) or Path(config).is_dir(), **kwargs)
    pipe.save_pretrained(tmp, safe_serialization=True)
    seconds = round(time.monotonic() - started, 1)
    finish(tmp, dest, {"source": file.name, "sha256": file_sha256(file), "config": config, "seconds": seconds})
    return seconds


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("file", type=Path)
    ap.add_argument("dest", type=Path)
    ap.add_argument("--config", default="auto")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s [single-file] %(message)s")
    seconds = convert(args.file, args.dest, args.config)
    log.info("converted %s in %.1f s", args.file.name, seconds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
