"""Model families: what each architecture is, as plain facts the whole model server reads.

A family (``sd.py``: Stable Diffusion 1.x/2.x; ``sdxl.py``: SDXL and its distilled kin) says its
text encoders and conditioning, its default and trained sizes, the diffusers pipeline classes that
run it per mode, the hub parts its presets add (LCM-LoRA, tiny VAE) and its latent-to-RGB preview.
Nothing here imports torch: the catalog detects a model's family from its files without loading
it, the job plan (engine/plan.py) is decided from these facts, and the engine resolves the class
names it finds here. A new family is one more module in this package and one line in ``FAMILIES``.
"""

from __future__ import annotations

from model_server.families.base import Family  # noqa: F401  (the package's interface)
from model_server.families.detect import detect  # noqa: F401
from model_server.families.sd import SD1, SD2
from model_server.families.sdxl import SDXL

FAMILIES: dict[str, Family] = {f.name: f for f in (SD1, SD2, SDXL)}
