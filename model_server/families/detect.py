"""Which family a model is, read from its files without loading it (torch-free, so the catalog can
list it and the gateway can default its size before the model was ever loaded).

A diffusers folder says it in ``model_index.json`` and its UNet's config; a single ``.safetensors``
checkpoint by its tensor names (read from the file's JSON header only); a hub id by the cached
snapshot's ``model_index.json`` when there is one, else by its name. The engine confirms the family
when it loads the model, and the loaded model's listing shows what it found.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

# Local random-weight models (engine/tiny_model.py): name -> (family, one-step).
TINY = {"tiny": ("sd1", False), "tiny-turbo": ("sd2", True), "tiny-sdxl": ("sdxl", False),
        "tiny-sdxl-turbo": ("sdxl", True)}
_XL_NAME = re.compile(r"xl|ssd-?1b|vega|playground", re.IGNORECASE)
# Models and LoRAs distilled to run in 1-8 steps without guidance, on trailing timesteps (SD-Turbo, SDXL-Turbo,
# SDXS, SDXL-Lightning, Hyper-SD, DMD2): their repositories and files are named so.
FEW_STEP_NAME = re.compile(r"turbo|sdxs|lightning|hyper[-_]?sd|dmd2|one[-_]?step|1[-_]?step", re.IGNORECASE)
_HEADER_LIMIT = 64 * 2**20  # a checkpoint's JSON header is a few hundred KB; more is not a checkpoint


def detect(source: str, kind: str) -> str:
    """The family name ("sd1", "sd2", "sdxl") of the model at ``source`` of catalog ``kind``."""
    if kind == "tiny":
        return TINY[source][0]
    if kind == "single_file":
        return from_checkpoint_keys(checkpoint_keys(Path(source)))
    if kind == "folder":
        return from_folder(Path(source)) or "sd1"
    return from_folder(_cached_snapshot(source)) or ("sdxl" if _XL_NAME.search(source) else "sd1")


# Each part's IR in a model published as OpenVINO IR only (optimum-intel's layout: engine/openvino_ir_model).
IR_FILE = "openvino_model.xml"


def ir_only_layout(files) -> bool:
    """Whether a model's files (paths relative to it: a folder's, a hub repository's) hold its UNet as OpenVINO IR
    and no torch weights for it."""
    unet = [f.removeprefix("unet/") for f in files if f.startswith("unet/")]
    return IR_FILE in unet and not any(f.endswith((".safetensors", ".bin")) and not f.startswith("openvino_model")
                                       for f in unet)


def openvino_only(folder: Path | None) -> bool:
    """Whether the diffusers-shaped ``folder`` is a model published as OpenVINO IR only (``ir_only_layout``)."""
    if folder is None or not (folder / "unet").is_dir():
        return False
    return ir_only_layout(f"unet/{p.name}" for p in (folder / "unet").iterdir())


def unet_multiple(folder: Path | None) -> int:
    """What the sides of the UNet in ``folder`` must be multiples of, compiled static (8 x 2 per downsampling stage:
    64 for SD and SDXL); 64 when its config does not say."""
    blocks = json_object(folder / "unet" / "config.json").get("down_block_types") if folder else None
    return 8 * 2 ** (len(blocks) - 1) if isinstance(blocks, list) and 0 < len(blocks) < 8 else 64


def folder_of(source: str, kind: str) -> Path | None:
    """The local folder of a catalog ``source`` (a hub id's cached snapshot), if there is one yet."""
    return Path(source) if kind == "folder" else _cached_snapshot(source) if kind == "hub" else None


def from_folder(folder: Path | None) -> str | None:
    """A diffusers folder's family, or None when it does not say."""
    if folder is None:
        return None
    index = json_object(folder / "model_index.json")
    if "XL" in str(index.get("_class_name", "")) or "text_encoder_2" in index:
        return "sdxl"
    unet = json_object(folder / "unet" / "config.json")
    family = from_config(unet)
    if family != "sd1":
        return family
    return "sd1" if index or unet else None


def from_config(config: dict) -> str:
    """The family a UNet's (or ControlNet's) diffusers config was made for: SDXL's add a text-time embedding, and
    each family's UNet attends to text of its encoders' width."""
    if config.get("addition_embed_type") == "text_time":
        return "sdxl"
    return from_text_width(config.get("cross_attention_dim"))


def from_text_width(width) -> str:
    """The family whose UNet attends to text ``width`` wide (SDXL's two encoders 2048, SD 2.x's 1024, SD 1.x's 768;
    the tiny test models' too: tiny-sdxl's two encoders are 80 wide, tiny's one 32)."""
    return {2048: "sdxl", 1024: "sd2", 80: "sdxl"}.get(width, "sd1")


def checkpoint_header(path: Path) -> dict:
    """A ``.safetensors`` file's header without its metadata: tensor name -> dtype, shape and offsets ({} when it
    is not one)."""
    try:
        with path.open("rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if not 0 < length <= _HEADER_LIMIT:
                return {}
            header = json.loads(f.read(length))
    except (OSError, ValueError, struct.error):
        return {}
    return {key: value for key, value in header.items() if key != "__metadata__"} if isinstance(header, dict) else {}


def checkpoint_keys(path: Path) -> list[str]:
    """The tensor names in a ``.safetensors`` file's header ([] when it is not one)."""
    return list(checkpoint_header(path))


def from_checkpoint_keys(keys: list[str]) -> str:
    """An original-layout (LDM) checkpoint's family by its tensor names."""
    if any(key.startswith("conditioner.embedders.1.") for key in keys):
        return "sdxl"
    if any(key.startswith("cond_stage_model.model.") for key in keys):
        return "sd2"
    return "sd1"


def _cached_snapshot(repo: str) -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo, "model_index.json")
    except Exception:  # not a valid repo id for the hub client: no snapshot
        return None
    return Path(found).parent if isinstance(found, str) else None


def json_object(path: Path) -> dict:
    """A JSON file's object ({} when it is missing, unreadable or not an object)."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}
