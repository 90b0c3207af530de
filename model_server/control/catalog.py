"""The ControlNets a unit may name: the diffusers folders (``config.json`` and its weights) in
``CONTROLNET_DIR``, named for the folder, each tied to the model family it was trained beside (read
from its config: SDXL's add a text-time embedding, SD 2.x's attend to 1024-wide text). The folder is
listed again whenever it changes, so one copied in is usable at once. Torch-free: the gateway's
listing and every submit's check read it.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

from model_server import errors
from protocol.control import ANNOTATOR_MODULES, BUILTIN_MODULES, module_named
from protocol.messages import MAX_NAME_LENGTH, ControlNetEntry, GenerationParams

log = logging.getLogger(__name__)
WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors")


def family_of(config: dict) -> str:
    """The family a ControlNet's diffusers config was made for (models' own, families/detect.py)."""
    if config.get("addition_embed_type") == "text_time":
        return "sdxl"
    width = config.get("cross_attention_dim")
    return "sd2" if width == 1024 else "sd1"


class ControlNets:
    """The ControlNets in ``folder`` by name (see the module)."""

    def __init__(self, folder: str):
        self.folder = Path(folder) if folder else None
        self._lock = threading.Lock()
        self._listed: tuple[float, dict[str, tuple[Path, str, int]]] = (-1.0, {})

    def _scan(self) -> dict[str, tuple[Path, str, int]]:
        """name -> (folder, family, weight bytes), rescanned when the folder's modification time changes."""
        if self.folder is None:
            return {}
        try:
            mtime = self.folder.stat().st_mtime
        except OSError:
            return {}
        with self._lock:
            if mtime != self._listed[0]:
                found = {}
                for path in sorted(self.folder.iterdir()):
                    if path.name.startswith(".") or len(path.name) > MAX_NAME_LENGTH or not path.is_dir():
                        continue
                    weights = next((path / w for w in WEIGHTS if (path / w).is_file()), None)
                    try:
                        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
                    except (OSError, ValueError):
                        continue
                    if weights is None or not isinstance(config, dict) or "ControlNet" not in str(
                            config.get("_class_name", "")):
                        continue
                    found[path.name] = (path, family_of(config), weights.stat().st_size)
                self._listed = (mtime, found)
            return self._listed[1]

    def names(self) -> list[str]:
        return list(self._scan())

    def find(self, name: str) -> tuple[Path, str] | None:
        """(folder, family) of the ControlNet ``name`` (A1111's "name [hash]" title too), else None."""
        listed = self._scan()
        hit = listed.get(name) or listed.get(name.split(" [")[0])
        return (hit[0], hit[1]) if hit else None

    def entries(self, loaded: set[str]) -> list[ControlNetEntry]:
        return [ControlNetEntry(name=name, file=path.name, family=family, size_bytes=size, loaded=name in loaded)
                for name, (path, family, size) in self._scan().items()]

    def check(self, params: GenerationParams, family: str, has_init_image: bool) -> None:
        """Raise a Rejection naming the first unit this server cannot run with a model of ``family``."""
        if params.controls and params.mode == "upscale":
            raise errors.invalid("control units are for generating images, not upscaling",
                                 "Leave controls out of an upscale job.", "controls")
        for i, unit in enumerate(params.controls):
            field = f"controls[{i}]"
            check_module(unit.module, field)
            if module_named(unit.module) == "inpaint_only" and params.mode != "inpaint":
                raise errors.invalid(f"{field}: the inpaint module needs an inpainting job (an init image and a "
                                     "mask)", "Send init_image and mask, or use another module.", "controls")
            if unit.guidance_start >= unit.guidance_end:
                raise errors.invalid(f"{field}: guidance_start {unit.guidance_start:g} is not before guidance_end "
                                     f"{unit.guidance_end:g}", "Use a range such as 0 to 1 (the whole run).",
                                     "controls")
            if params.mode == "detect":
                continue
            if not unit.model:
                raise errors.invalid(f"{field} names no ControlNet model",
                                     f"Use one of GET /v1/controlnets: {', '.join(self.names()) or 'none here'}.",
                                     "controls")
            found = self.find(unit.model)
            if found is None:
                raise errors.unknown_name("ControlNet", unit.model, self.names(), "GET /v1/controlnets", "controls")
            if found[1] != family:
                raise errors.invalid(f"{field}: the ControlNet {unit.model} is for {found[1]} models and this job's "
                                     f"model is {family}", "Use a ControlNet made for the job's model family "
                                     "(GET /v1/controlnets lists each one's family).", "controls")


def check_module(name: str, field: str = "controls") -> str:
    """The built-in preprocessor ``name`` means; a Rejection saying why when there is none."""
    module = module_named(name)
    if module is not None:
        return module
    if name.strip().lower() in ANNOTATOR_MODULES:
        raise errors.invalid(f"{field}: the preprocessor {name} needs an annotator model this server does not have",
                             "Send a control map you made already with module none, or use one of: "
                             f"{', '.join(BUILTIN_MODULES)}.", "controls")
    raise errors.unknown_name("preprocessor", name, list(BUILTIN_MODULES), "GET /v1/controlnets", "controls")
