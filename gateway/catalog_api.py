"""``GET /v1/loras``, and how a model of the list is shown (``GET /v1/models``, in openai_api, keeps
OpenAI's list shape with these fields beside): what a request may name in ``model`` and ``loras``."""

from __future__ import annotations

from flask import Blueprint, jsonify

from gateway.services import services
from protocol.messages import LoraEntry, ModelEntry

bp = Blueprint("catalog", __name__)


def model_item(m: ModelEntry) -> dict:
    """A model as OpenAI lists one (id, object, created, owned_by), with what it is and can run."""
    return {"id": m.name, "object": "model", "created": 0, "owned_by": "sd-cpu", "kind": m.kind, "source": m.source,
            "default": m.default, "loaded": m.loaded, "one_step": m.one_step,
            "unavailable_presets": m.unavailable_presets, "hash": m.hash or None, "family": m.family,
            "default_size": f"{m.default_width}x{m.default_height}" if m.default_width else None, "sizes": m.sizes}


def lora_item(lora: LoraEntry) -> dict:
    return {"name": lora.name, "file": lora.file, "size_bytes": lora.size_bytes, "hash": lora.hash or None,
            "loaded": lora.loaded}


@bp.get("/v1/loras")
def list_loras():
    """The LoRAs in the model server's LORA_DIR: names for ``loras`` or ``<lora:NAME:WEIGHT>``."""
    listing = services().model_list(fresh=True)
    return jsonify(loras=[lora_item(lora) for lora in listing.loras])
