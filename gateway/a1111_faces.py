"""AUTOMATIC1111's face restoration as this server does it: ``restore_faces`` on txt2img/img2img, the
extras' GFPGAN and CodeFormer visibilities, and ``GET /sdapi/v1/face-restorers``.

A1111 names two restorers, "GFPGAN" and "CodeFormer", and picks one with its option
``face_restoration_model``; here a restorer is a file in FACE_RESTORER_DIR ("GFPGANv1.4"), so an A1111
name means the first file whose name starts with it, and any other the first one listed. When the
server has none (or no face detector), the image still comes back, and ``info`` says why its faces
are as they were: an A1111 client never fails for asking.
"""

from __future__ import annotations

from flask import Blueprint, jsonify

from gateway.services import services
from protocol.messages import ModelList

bp = Blueprint("a1111_faces", __name__, url_prefix="/sdapi/v1")

NOT_CONFIGURED = ("no face restorer is configured on this server (FACE_RESTORER_DIR: a GFPGAN or RestoreFormer model "
                  "and facexlib's detection_Resnet50_Final.pth); the faces are as {made}")


def restorer_for(listing: ModelList, wanted: str) -> tuple[str | None, bool]:
    """The restorer file an A1111 name means (see the module's doc), None when none can run; and whether
    it is the one named."""
    names = [f.name for f in listing.face_restorers]
    if not names or not listing.face_detector:
        return None, False
    match = next((n for n in names if n == wanted or wanted and n.lower().startswith(wanted.lower())), None)
    return match or names[0], match is not None


def face_fields(wanted: str, visibility: float = 1.0, made: str = "generated") -> tuple[dict | None, str | None]:
    """Our ``face_restoration`` for an A1111 request that asks for ``wanted``, and a note when it is not
    done as asked (no restorer: not at all; not that one: by another)."""
    name, named = restorer_for(services().model_list(), wanted)
    if name is None:
        return None, NOT_CONFIGURED.format(made=made)
    note = None if named else f"{wanted} is not on this server; {name} restored the faces"
    return {"model": name, "visibility": visibility}, note


@bp.get("/face-restorers")
def face_restorers():
    """A1111's shape: each restorer's name (no paths: never a server's folder)."""
    listing = services().model_list(fresh=True)
    if not listing.face_detector:
        return jsonify([])
    return jsonify([{"name": f.name, "cmd_dir": None} for f in listing.face_restorers])
