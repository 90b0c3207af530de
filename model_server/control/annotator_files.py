"""The annotator models in ``ANNOTATOR_DIR``: which of protocol.control.ANNOTATOR_MODULES this server can run.

Each annotator is one weights file as lllyasviel/Annotators publishes it (the files A1111's extension
downloads, under any subfolder: its ``annotator/downloads/<kind>/`` layout works as the hub's flat one), or, for
depth, a transformers folder (``config.json`` with its ``model_type`` and weights, as
depth-anything/Depth-Anything-V2-Small-hf or Intel/dpt-hybrid-midas ship them). Nothing is downloaded at job
time: ``python -m model_server fetch --annotators`` fills the folder ahead (``Annotator.repo`` says from where).

Torch-free: the listing and every submit's check read it; engine/annotators.py runs them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from model_server import errors
from model_server.families.detect import json_object
from model_server.models.named_files import Rescanned
from protocol.control import ANNOTATOR_MODULES, BUILTIN_MODULES, UNSUPPORTED_MODULES, module_named, runnable


@dataclasses.dataclass(frozen=True)
class Annotator:
    """Where an annotator's weights are: a file by name, or a transformers folder by its config's model_type."""

    file: str = ""
    model_type: str = ""
    repo: str = "lllyasviel/Annotators"  # where fetch --annotators gets it

    @property
    def folder(self) -> str:
        """A transformers folder's name in ANNOTATOR_DIR as fetch --annotators makes it: the repository's."""
        return self.repo.split("/")[-1]


ANNOTATORS: dict[str, Annotator] = {
    "lineart": Annotator("sk_model.pth"),
    "lineart_coarse": Annotator("sk_model2.pth"),
    "lineart_anime": Annotator("netG.pth"),
    "hed": Annotator("ControlNetHED.pth"),
    "pidinet": Annotator("table5_pidinet.pth"),
    "mlsd": Annotator("mlsd_large_512_fp32.pth"),
    "openpose": Annotator("body_pose_model.pth"),
    "normal_bae": Annotator("scannet.pt"),
    "depth_anything": Annotator(model_type="depth_anything", repo="depth-anything/Depth-Anything-V2-Small-hf"),
    "midas": Annotator(model_type="dpt", repo="Intel/dpt-hybrid-midas"),
}
# A module whose annotator is absent: the file or folder to put in ANNOTATOR_DIR.
_NEEDS = {name: a.file or f"a {a.model_type} folder such as {a.repo}" for name, a in ANNOTATORS.items()}


def _found(folder: Path) -> dict[str, Path]:
    """annotator -> its file or folder; the first in sorted order wins; hidden files never."""
    by_file = {a.file: name for name, a in ANNOTATORS.items() if a.file}
    by_type = {a.model_type: name for name, a in ANNOTATORS.items() if a.model_type}
    found: dict[str, Path] = {}
    for path in sorted(folder.rglob("*")):
        if any(part.startswith(".") for part in path.relative_to(folder).parts):
            continue
        if path.name in by_file and path.is_file():
            found.setdefault(by_file[path.name], path)
        elif path.name == "config.json" and path.is_file():
            model_type = (json_object(path) or {}).get("model_type")
            if isinstance(model_type, str) and model_type in by_type and (
                    any(path.parent.glob("*.safetensors")) or any(path.parent.glob("*.bin"))):
                name = by_type[model_type]
                # Depth Anything V2 before V1 when both are there (the newer, better one)
                if name not in found or ("v2" in path.parent.name.lower() and "v2" not in found[name].name.lower()):
                    found[name] = path.parent
    return found


class AnnotatorFiles:
    """The annotators under ``folder`` (rescanned when it changes: one copied in is usable at once)."""

    def __init__(self, folder: str):
        self.folder = folder
        self._listing = Rescanned(folder, _found)

    def found(self) -> dict[str, Path]:
        return dict(self._listing.get())

    def modules(self, have: dict[str, Path] | None = None) -> list[str]:
        """The modules with an annotator this server has (``have``: what ``found`` gave, when known)."""
        have = self.found() if have is None else have
        return [name for name, m in ANNOTATOR_MODULES.items() if m.annotator in have]

    def path(self, module: str) -> Path | None:
        return self.found().get(ANNOTATOR_MODULES[module].annotator)

    def check(self, name: str, field: str = "controls") -> str:
        """The preprocessor ``name`` means when this server can run it; a Rejection saying why not."""
        module = module_named(name)
        if module in BUILTIN_MODULES:
            return module
        have = self.found()  # one look at the folder for the whole check
        if module is not None and ANNOTATOR_MODULES[module].annotator in have:
            return module
        runs = runnable(self.modules(have))
        if module is not None:
            need = _NEEDS[ANNOTATOR_MODULES[module].annotator]
            raise errors.invalid(
                f"{field}: the preprocessor {name} needs its annotator model ({need}), which this server does not have",
                f"Put {need} in ANNOTATOR_DIR ({'set it' if not self.folder else self.folder}; "
                "python -m model_server fetch --annotators downloads them), send a control map you made already "
                "with module none, or use one of: " + ", ".join(runs) + ".", "controls")
        if name.strip().lower() in UNSUPPORTED_MODULES:
            raise errors.invalid(f"{field}: this server does not run the preprocessor {name}",
                                 "Send a control map you made already (a pose image, say) with module none, or use "
                                 f"one of: {', '.join(runs)}.", "controls")
        raise errors.unknown_name("preprocessor", name, runs, "GET /v1/controlnets", "controls")
