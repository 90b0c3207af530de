"""The models a job may name: ``SD_MODEL`` (the default), ``SD_MODELS`` and ``SD_MODELS_DIR``.

Each model has a name (a hub id, or the folder's or file's name), a kind (hub, folder,
single-file checkpoint, the local tiny ones), a family (model_server/families: SD 1.x, 2.x, SDXL,
read from its files) and whether it is a one-step model (SD-Turbo, SDXL-Turbo, SDXS: distilled to
run 1-4 steps without guidance), which the ``turbo`` preset needs. The folder is
listed again whenever its modification time changes, so a checkpoint copied in is usable without
a restart. Single files must be ``.safetensors``: a pickled ``.ckpt`` runs code when loaded.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import threading
from pathlib import Path
from typing import Callable

from model_server.families import FAMILIES
from model_server.families.detect import FEW_STEP_NAME, TINY, detect, folder_of, openvino_only, unet_multiple
from model_server.loading.hub_files import is_hub_id
from protocol.contract import Limits
from protocol.messages import MAX_NAME_LENGTH, ModelEntry

log = logging.getLogger(__name__)

# The local random-weight models the engine writes (tests, demos), each with its family's shapes.
TINY_MODELS = {name: one_step for name, (_, one_step) in TINY.items()}
# A model named like a few-step one (families.detect.FEW_STEP_NAME) is one; a model's scheduler configured with
# "trailing" timesteps (how SD-Turbo ships) counts too.
_ONE_STEP = FEW_STEP_NAME
# A1111 names a checkpoint "file.safetensors [hash]"; clients send that title back.
_A1111_TITLE = re.compile(r"^(.*?)(\.safetensors)?( \[[0-9a-f]{8,64}\])?$")


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """One model a job may name, and where its weights are."""

    name: str
    source: str  # hub id, "tiny"/"tiny-turbo", or a local folder or .safetensors path
    kind: str  # hub | folder | single_file | tiny
    one_step: bool = False
    default: bool = False
    family: str = "sd1"  # model_server.families
    # Published as OpenVINO IR only (engine/openvino_ir_model): no torch weights. The UNet's sides must then be
    # multiples of ``ir_multiple`` (its graph upsamples by fixed factors).
    openvino_only: bool = False
    ir_multiple: int = 64

    def sizes(self, limits: Limits) -> list[tuple[int, int]]:
        """The trained sizes this deployment's bounds allow."""
        return [(w, h) for w, h in FAMILIES[self.family].sizes(self.one_step)
                if limits.min_size <= w <= limits.max_width and limits.min_size <= h <= limits.max_height]

    def default_size(self, limits: Limits) -> tuple[int, int]:
        """The size of a request naming this model that gives none: its family's trained square
        (DEFAULT_SIZE where that is 512), within the bounds."""
        side = FAMILIES[self.family].default_size(self.one_step, limits.default_size)
        return min(side, limits.max_width), min(side, limits.max_height)

    @property
    def shown(self) -> str:
        """The source without a local path (paths stay private)."""
        return self.source if self.kind in ("hub", "tiny") else Path(self.source).name


def kind_of(source: str) -> str:
    if source in TINY_MODELS:
        return "tiny"
    if source.lower().endswith(".safetensors"):
        return "single_file"
    return "hub" if is_hub_id(source) else "folder"


def _trailing_scheduler(folder: Path) -> bool:
    try:
        config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get("timestep_spacing") == "trailing"


def is_one_step(name: str, source: str) -> bool:
    if source in TINY_MODELS:
        return TINY_MODELS[source]
    return bool(_ONE_STEP.search(name) or _ONE_STEP.search(Path(source).name)) or (
        kind_of(source) == "folder" and _trailing_scheduler(Path(source)))


def _name_for(source: str) -> str:
    if kind_of(source) in ("hub", "tiny"):
        return source
    path = Path(source)
    return path.stem if path.suffix.lower() == ".safetensors" else path.name


def make_source(source: str, name: str | None = None, default: bool = False) -> ModelSource:
    name = (name or _name_for(source))[:MAX_NAME_LENGTH]
    kind = kind_of(source)
    folder = folder_of(source, kind)
    return ModelSource(name=name, source=source, kind=kind, one_step=is_one_step(name, source), default=default,
                       family=detect(source, kind), openvino_only=openvino_only(folder),
                       ir_multiple=unet_multiple(folder))


def parse_list(text: str) -> list[ModelSource]:
    """``SD_MODELS``: comma-separated sources, each optionally ``NAME=SOURCE``; a ``.ckpt`` is refused."""
    sources = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, source = item.rpartition("=")
        source = source.strip()
        if source.lower().endswith((".ckpt", ".pt", ".bin")):
            raise ValueError(f"SD_MODELS: {source!r} is a pickle file, which runs code when loaded; convert it to "
                             ".safetensors first")
        sources.append(make_source(source, name.strip() or None))
    return sources


class Catalog:
    """The configured models, the default first; the folder's are listed again when it changes."""

    def __init__(self, default: str, listed: str = "", folder: str = "", limits: Limits | None = None):
        self.limits = limits or Limits()  # a model's sizes are listed within them
        self.default = make_source(default, default=True)
        self._listed = parse_list(listed)
        self._folder = Path(folder) if folder else None
        self._lock = threading.Lock()
        self._scanned: tuple[float, list[ModelSource]] = (-1.0, [])

    def _in_folder(self) -> list[ModelSource]:
        if self._folder is None:
            return []
        try:
            mtime = self._folder.stat().st_mtime
        except OSError:
            return []
        with self._lock:
            if mtime != self._scanned[0]:
                found = []
                for path in sorted(self._folder.iterdir()):
                    if path.name.startswith("."):
                        continue
                    if path.is_dir() and (path / "model_index.json").exists():
                        found.append(make_source(str(path)))
                    elif path.is_file() and path.suffix.lower() == ".safetensors":
                        found.append(make_source(str(path)))
                self._scanned = (mtime, found)
            return self._scanned[1]

    def models(self) -> list[ModelSource]:
        """Every model by name, first come first kept (the default, SD_MODELS, then the folder)."""
        seen: dict[str, ModelSource] = {}
        for model in [self.default, *self._listed, *self._in_folder()]:
            if model.name in seen:
                if model.source != seen[model.name].source:
                    log.debug("model name %s is taken; %s is not listed", model.name, model.shown)
                continue
            seen[model.name] = model
        return list(seen.values())

    def find(self, name: str) -> ModelSource | None:
        """The model a request names: "" is the default; a name, a file name, or A1111's title
        ("name.safetensors [hash]")."""
        if not name:
            return self.default
        models = {m.name: m for m in self.models()}
        if name in models:
            return models[name]
        base = _A1111_TITLE.match(name).group(1)
        return models.get(base)

    def names(self) -> list[str]:
        return [m.name for m in self.models()]

    def entries(self, loaded: str | None, hashes: dict[str, str],
                unavailable: Callable[[ModelSource], dict[str, str]]) -> list[ModelEntry]:
        limits = self.limits
        return [ModelEntry(name=m.name, kind=m.kind, source=m.shown, default=m.default, loaded=m.name == loaded,
                           one_step=m.one_step, unavailable_presets=unavailable(m), hash=hashes.get(m.name, ""),
                           family=m.family, default_width=m.default_size(limits)[0],
                           default_height=m.default_size(limits)[1],
                           sizes=[f"{w}x{h}" for w, h in m.sizes(limits)])
                for m in self.models()]
