"""IP-Adapter on the torch engine: the adapter of the latest job that had one, attached to the model's UNet.

An IP-Adapter adds image cross-attention beside each text one and brings its CLIP image encoder (SD 1.5's
ViT-H: 0.6 GB in bf16). It changes the UNet's attention processors, which a job without it must not meet,
so it is attached for the jobs that name it and taken off (the encoder dropped) by the next job that does
not: consecutive jobs with the same adapter load it once.
"""

from __future__ import annotations

import logging
import time

from model_server.errors import redact
from model_server.memory import release_memory
from model_server.pipeline import load_error

log = logging.getLogger(__name__)


class LoadedIpAdapter:
    """The IP-Adapter attached to ``pipe`` (a diffusers pipeline with IP-Adapter support), if any."""

    def __init__(self, pipe, token: str = ""):
        self.pipe, self._token = pipe, token
        self.name: str | None = None

    def use(self, name: str | None, model=None) -> bool:
        """Attach the adapter ``name`` (its ``control.catalog.ControlModel``), or none; True when that changed
        what is attached (pipelines made over the old modules are stale)."""
        if name == self.name:
            return False
        if self.name is not None:
            self.pipe.unload_ip_adapter()
            self.name = None
            release_memory()
        if name is None:
            return True
        started = time.monotonic()
        try:
            self.pipe.load_ip_adapter(str(model.path.parent), subfolder="", weight_name=model.path.name,
                                      image_encoder_folder=str(model.encoder))
        except Exception as exc:  # a broken file fails the job that names it, said plainly
            reason = redact(f"{type(exc).__name__}: {str(exc)[:300]}", self._token)
            raise load_error(f"could not load the IP-Adapter {name!r}: {reason}",
                             "Check its file and its image_encoder folder in CONTROLNET_DIR.") from None
        self.name = name
        log.info("IP-Adapter %s attached in %.1f s", name, time.monotonic() - started)
        return True
