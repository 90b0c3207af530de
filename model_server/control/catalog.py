"""The models a control unit may name, in ``CONTROLNET_DIR``, each tied to the model family it was trained
beside and listed again whenever the folder changes (one copied in is usable at once):

- ControlNets: diffusers folders (``config.json`` and its weights), named for the folder, the family from the
  config (SDXL's add a text-time embedding, SD 2.x's attend to 1024-wide text); and single ``.safetensors``
  files as A1111 keeps them (``control_v11p_sd15_canny.safetensors``: the original layout, or diffusers' keys in
  one file), named for the file, the family from their tensors. A single file carries no config: the engine
  gives it the one a ControlNet made from the loaded model has (engine/controlnets.config_for).
- IP-Adapters: ``.safetensors`` files anywhere under it holding ``image_proj`` and ``ip_adapter`` tensors, named
  for the file, as h94/IP-Adapter lays them out (``models/ip-adapter_sd15.safetensors`` beside
  ``models/image_encoder/``): the image encoder is the ``image_encoder`` folder beside the file, else one
  elsewhere in the folder of the width it reads (the projection's; the plus and face variants' Resampler reads the
  hidden states); the family from the text width the adapter attends to.

Torch-free: the gateway's listing and every submit's check read it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from model_server import errors
from model_server.control.annotator_files import AnnotatorFiles
from model_server.families.detect import checkpoint_header, from_config, from_text_width, json_object
from model_server.models.named_files import Rescanned
from protocol.control import IP_ADAPTER
from protocol.messages import MAX_NAME_LENGTH, ControlNetEntry, GenerationParams

WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors")


@dataclasses.dataclass(frozen=True)
class ControlModel:
    """One model a unit may name: a ControlNet's folder, or an IP-Adapter's file and its image encoder."""

    path: Path
    family: str
    kind: str  # controlnet | ip-adapter
    size: int
    encoder: Path | None = None


def _shape(header: dict, ending: str) -> list | None:
    """The shape of the first tensor whose name ends with ``ending`` (None: none, or no shape)."""
    entry = next((value for key, value in header.items() if key.endswith(ending)), None)
    shape = entry.get("shape") if isinstance(entry, dict) else None
    return shape if isinstance(shape, list) and len(shape) == 2 else None


def _ip_adapter(header: dict) -> tuple[str, int, bool] | None:
    """(family, the image encoder's width it reads, whether that is its hidden states rather than its projected
    embedding) of an IP-Adapter file's header, else None (not one). The plus and face variants' Resampler reads the
    hidden states (``proj_in``); the plain adapter the projection (``proj``)."""
    if not any(k.startswith("image_proj.") for k in header) or not any(k.startswith("ip_adapter.") for k in header):
        return None
    to_k = _shape(header, "to_k_ip.weight")
    proj, plus = _shape(header, "image_proj.proj.weight"), False
    if proj is None:
        proj, plus = _shape(header, "image_proj.proj_in.weight"), True
    if not to_k or not proj:
        return None
    return from_text_width(to_k[1]), proj[-1], plus


def _single_controlnet(header: dict) -> str | None:
    """The family of a single-file ControlNet from its tensors' names and shapes, else None (not one)."""
    if not any(k.endswith(("controlnet_cond_embedding.conv_in.weight", "input_hint_block.0.weight")) for k in header):
        return None
    if any(k.endswith(("add_embedding.linear_1.weight", "label_emb.0.0.weight")) for k in header):
        return "sdxl"
    to_k = _shape(header, "attn2.to_k.weight")
    return from_text_width(to_k[1]) if to_k else "sd1"


def _encoders(folder: Path) -> dict[Path, tuple]:
    """The image encoders under ``folder``: their folders and (projection width, hidden width)."""
    return {config.parent: ((c := json_object(config)).get("projection_dim"), c.get("hidden_size"))
            for config in folder.rglob("image_encoder/config.json")}


def _found(folder: Path) -> dict[str, ControlModel]:
    """The ControlNets and IP-Adapters in ``folder`` by name (see the module)."""
    found: dict[str, ControlModel] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or len(path.name) > MAX_NAME_LENGTH or not path.is_dir():
            continue
        weights = next((path / w for w in WEIGHTS if (path / w).is_file()), None)
        config = json_object(path / "config.json")
        if weights is None or "ControlNet" not in str(config.get("_class_name")):
            continue
        found[path.name] = ControlModel(path, from_config(config), "controlnet", weights.stat().st_size)
    encoders = _encoders(folder)
    for path in sorted(folder.rglob("*.safetensors")):
        name = path.stem
        if (name.startswith(".") or len(name) > MAX_NAME_LENGTH or name in found or "image_encoder" in path.parts
                or (path.parent / "config.json").exists()):  # a diffusers model folder's own weights
            continue
        header = checkpoint_header(path)
        single = _single_controlnet(header)
        if single is not None:
            found[name] = ControlModel(path, single, "controlnet", path.stat().st_size)
            continue
        adapter = _ip_adapter(header)
        if adapter is None:
            continue
        family, width, plus = adapter
        beside = path.parent / "image_encoder"
        fits = [place for place, widths in encoders.items() if widths[plus] == width]
        encoder = beside if beside in fits else next(iter(fits), None)
        found[name] = ControlModel(path, family, IP_ADAPTER, path.stat().st_size, encoder)
    return found


class ControlNets:
    """The ControlNets and IP-Adapters in ``folder`` by name (see the module)."""

    def __init__(self, folder: str, annotators: AnnotatorFiles | None = None):
        self._listing = Rescanned(folder, _found)
        self.annotators = annotators or AnnotatorFiles("")  # what the preprocessors needing weights run

    def _scan(self) -> dict[str, ControlModel]:
        """name -> the model, rescanned when the folder or a subfolder changes."""
        return self._listing.get()

    def names(self) -> list[str]:
        return list(self._scan())

    def find(self, name: str) -> ControlModel | None:
        """The model ``name`` names (A1111's "name [hash]" title too), else None."""
        listed = self._scan()
        return listed.get(name) or listed.get(name.split(" [")[0])

    def entries(self, loaded: set[str]) -> list[ControlNetEntry]:
        return [ControlNetEntry(name=name, file=m.path.name, family=m.family, size_bytes=m.size, kind=m.kind,
                                loaded=name in loaded) for name, m in self._scan().items()]

    def check(self, params: GenerationParams, family: str) -> None:
        """Raise a Rejection naming the first unit this server cannot run with a model of ``family``."""
        if params.controls and params.mode == "upscale":
            raise errors.invalid("control units are for generating images, not upscaling",
                                 "Leave controls out of an upscale job.", "controls")
        adapters = 0
        for i, unit in enumerate(params.controls):
            field = f"controls[{i}]"
            module = self.annotators.check(unit.module, field)  # (the inpaint module's mask: admission's check)
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
            self._check_kind(field, unit.model, module, found)
            adapters += found.kind == IP_ADAPTER
            if found.family != family:
                raise errors.invalid(f"{field}: the {found.kind} {unit.model} is for {found.family} models and this "
                                     f"job's model is {family}", "Use one made for the job's model family "
                                     "(GET /v1/controlnets lists each one's family).", "controls")
        if adapters > 1:
            raise errors.invalid(f"{adapters} IP-Adapter units: one runs per job", "Send one IP-Adapter unit.",
                                 "controls")

    @staticmethod
    def _check_kind(field: str, name: str, module: str, found: ControlModel) -> None:
        if (module == IP_ADAPTER) != (found.kind == IP_ADAPTER):
            raise errors.invalid(f"{field}: {name} is {'an IP-Adapter' if found.kind == IP_ADAPTER else 'a ControlNet'}"
                                 f" and the module {module} is {'' if module == IP_ADAPTER else 'not '}for IP-Adapters",
                                 f"Use the module {IP_ADAPTER} with IP-Adapters, and a preprocessor with ControlNets.",
                                 "controls")
        if found.kind == IP_ADAPTER and found.encoder is None:
            raise errors.invalid(f"{field}: the IP-Adapter {name} has no image encoder beside it",
                                 "Put its image_encoder folder (as h94/IP-Adapter ships it) next to the file in "
                                 "CONTROLNET_DIR.", "controls")

