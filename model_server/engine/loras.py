"""Users' LoRAs on the loaded pipeline: loaded once as PEFT adapters, kept within a memory budget,
switched per job.

An adapter leaves the model's own weights untouched (no fusing), so the mapped weights stay
shared with the page cache and can be released between phases (residency.py), and a job without
LoRAs pays nothing: the adapters are switched off. Files in kohya/A1111 format (what people
download) and diffusers format both load, through diffusers' own conversion. The fast preset's
LCM-LoRA is one more adapter here, combined with the job's.
"""

from __future__ import annotations

import collections
import logging
from pathlib import Path

from diffusers import StableDiffusionPipeline

from model_server.errors import load_error

log = logging.getLogger(__name__)


def _adapter_params(pipe: StableDiffusionPipeline, adapter: str):
    for component in (pipe.unet, pipe.text_encoder):
        for name, param in component.named_parameters():
            if f".{adapter}." in name or name.endswith(f".{adapter}"):
                yield param


def _unusable(name: str, why: str):
    return load_error(f"could not load LoRA {name!r}: {why}",
                      "Check that the file is a LoRA for this model's architecture (SD 1.x LoRAs fit SD 1.x models "
                      "only), in kohya/A1111 or diffusers format.")


class LoraAdapters:
    """The user LoRAs attached to one pipeline's modules (LRU within ``budget_bytes``)."""

    def __init__(self, pipe: StableDiffusionPipeline, budget_bytes: int):
        self.pipe, self.budget = pipe, budget_bytes
        # name -> (adapter id, file version, bytes); most recently used last
        self._loaded: collections.OrderedDict[str, tuple[str, tuple, int]] = collections.OrderedDict()
        self._count = 0

    def loaded(self) -> set[str]:
        return set(self._loaded)

    @property
    def bytes(self) -> int:
        return sum(size for _, _, size in self._loaded.values())

    def _load(self, name: str, path: Path, version: tuple) -> None:
        self._count += 1
        adapter = f"user{self._count}"  # PEFT keys modules by adapter name: no dots or spaces from file names
        try:
            self.pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=adapter,
                                        low_cpu_mem_usage=True)
        except Exception as exc:
            self._drop_partial(adapter)
            first = str(exc).splitlines()[0][:300] if str(exc) else ""
            raise _unusable(name, f"{type(exc).__name__}: {first}") from None
        dtype = self.pipe.unet.dtype
        size = 0
        for param in _adapter_params(self.pipe, adapter):
            if param.dtype != dtype:  # LoRA files are often float32: keep the model's dtype (half the memory in bf16)
                param.data = param.data.to(dtype)
            size += param.numel() * param.element_size()
        if not size:  # diffusers loads a file without a single matching key silently
            self._drop_partial(adapter)
            raise _unusable(name, "it holds no LoRA weights for this model's layers")
        self._loaded[name] = (adapter, version, size)
        log.info("LoRA %s loaded (%.1f MB)", name, size / 2**20)

    def _drop_partial(self, adapter: str) -> None:
        try:
            self.pipe.delete_adapters([adapter])
        except Exception:  # nothing was attached
            pass

    def _evict(self, keep: set[str]) -> None:
        for name in list(self._loaded):
            if self.bytes <= self.budget:
                return
            if name not in keep:
                adapter, _, size = self._loaded.pop(name)
                self.pipe.delete_adapters([adapter])
                log.info("LoRA %s dropped from memory (%.1f MB; LORA_CACHE_MB)", name, size / 2**20)

    def use(self, loras: list[tuple[str, Path, float]], extra: list[tuple[str, float]] = (),
            others_attached: bool = False) -> None:
        """Switch on exactly ``loras`` (name, file, weight) and ``extra`` (adapter id, weight: the LCM-LoRA);
        ``others_attached``: adapters not ours are attached (the LCM-LoRA), which must be switched off too."""
        for name, path, _ in loras:
            stat = path.stat()
            version = (str(path), stat.st_size, stat.st_mtime)
            known = self._loaded.get(name)
            if known is not None and known[1] != version:  # the file changed: load it again
                self.pipe.delete_adapters([known[0]])
                del self._loaded[name]
                known = None
            if known is None:
                self._load(name, path, version)
            self._loaded.move_to_end(name)
        self._evict({name for name, _, _ in loras})
        names = [self._loaded[name][0] for name, _, _ in loras] + [adapter for adapter, _ in extra]
        weights = [weight for _, _, weight in loras] + [weight for _, weight in extra]
        if names:
            self.pipe.enable_lora()
            self.pipe.set_adapters(names, weights)
        elif self._loaded or others_attached:
            self.pipe.disable_lora()

