"""The face restorers a job may name, and restoring the faces of an image.

Every ``.pth`` or ``.safetensors`` under ``FACE_RESTORER_DIR`` is a restorer named for its file
(A1111's ``GFPGANv1.4``), except facexlib's own files: the face detector
(``detection_Resnet50_Final.pth`` preferred, ``detection_mobilenet0.25_Final.pth`` otherwise), which
every restorer needs, and the face parser (``parsing_*``), which we do not use. A1111 users point
the setting at their ``models/GFPGAN`` folder as it is. What runs them is ``models`` (the engine's,
or the fake's without torch).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Protocol

from PIL import Image

from model_server import errors
from model_server.errors import Rejection
from model_server.finishing.first_use import MadeOnFirstUse
from model_server.models.named_files import NamedFiles, on_disk
from model_server.pipeline import PipelineLoadError
from protocol.messages import FaceRestoration, FaceRestorerEntry, StopMode

EXTENSIONS = (".pth", ".safetensors")  # never .pt/.ckpt: TorchScript and full pickles run code
# facexlib's helper files, by the prefix of their names; the detectors in order of preference.
DETECTORS = ("detection_Resnet50_Final", "detection_mobilenet0.25_Final")
_HELPER_PREFIXES = ("detection_", "parsing_")
SETTING_HINT = ("Put a GFPGAN (GFPGANv1.4.pth) or RestoreFormer model and facexlib's detection_Resnet50_Final.pth "
                "in FACE_RESTORER_DIR (A1111's models/GFPGAN folder has both).")


def _is_model_file(path: Path) -> bool:
    return path.suffix.lower() in EXTENSIONS and path.stem.isprintable()


class FaceModels(Protocol):
    """What runs a restorer file (engine/face_restore.py; fake_pipeline.FakeFaceModels)."""

    def describe(self, path: Path) -> tuple[str, str] | None: ...

    def restore(self, path: Path, detector: Path, image: Image.Image, visibility: float,
                stop) -> tuple[Image.Image, int]: ...


class FaceRestorers:
    """The restorer files and the detector in FACE_RESTORER_DIR, by name."""

    def __init__(self, folder: str, models: Callable[[], FaceModels]):
        self._listing = NamedFiles(folder, _is_model_file)
        self._models = MadeOnFirstUse(models)

    @property
    def models(self) -> FaceModels:
        return self._models.get()

    def files(self) -> dict[str, Path]:
        return {name: path for name, path in self._listing.files().items() if not name.startswith(_HELPER_PREFIXES)}

    def detector(self) -> Path | None:
        listed = self._listing.files()
        return next((listed[name] for name in DETECTORS if name in listed), None)

    def entries(self) -> list[FaceRestorerEntry]:
        out = []
        known = self._models.made
        for name, path, stat in on_disk(self.files()):
            described = known.describe(path) if known is not None else None
            out.append(FaceRestorerEntry(name=name, file=path.name, size_bytes=stat.st_size,
                                         architecture=described[0] if described else ""))
        return out

    def resolve(self, name: str) -> str:
        """The restorer ``name`` means ("" = the first listed); a Rejection naming FACE_RESTORER_DIR when
        none can run, or the ones there are when ``name`` is not one."""
        files = self.files()
        if not files:
            raise errors.invalid("face restoration needs a face restoration model, and FACE_RESTORER_DIR has none",
                                 SETTING_HINT, "face_restoration")
        if self.detector() is None:
            raise errors.invalid("face restoration needs a face detector, and FACE_RESTORER_DIR has none",
                                 SETTING_HINT, "face_restoration")
        if not name:
            return next(iter(files))
        if name not in files:
            raise errors.unknown_name("face restorer", name, list(files), "GET /v1/face-restorers", "face_restoration")
        return name

    def describe(self, name: str) -> str:
        """What ran ``name`` ("GFPGAN, bfloat16") once it is loaded, else ""."""
        path = self.files().get(name)
        described = self.models.describe(path) if path is not None else None
        return ", ".join(described) if described else ""

    def restore(self, faces: FaceRestoration, image: Image.Image,
                stop: Callable[[], StopMode | None]) -> tuple[Image.Image, int, str]:
        """``image`` with its faces restored as ``faces`` says, how many were, and the restorer's name."""
        try:
            name = self.resolve(faces.model)
        except Rejection as exc:  # the folder changed since the job was accepted
            raise PipelineLoadError(exc.error) from None
        detector = self.detector()
        restored, count = self.models.restore(self.files()[name], detector, image, faces.visibility, stop)
        return restored, count, name
