"""Writes tiny random-weight upscaler model files in real architectures' layouts, so every upscaling
flow is tested offline: an ESRGAN (the layout of 4x-UltraSharp and most community models) as a
``.pth``, a Real-ESRGAN Compact (realesr-general-x4v3's kind) and a SPAN as ``.safetensors``. They
are read back through the same loader as a downloaded model (spandrel detects each one's
architecture and scale from its weights); only their widths are small.

Usage: ``python -m model_server.engine.tiny_upscalers DIR``
"""

from __future__ import annotations

import argparse
from pathlib import Path

# file name -> (architecture, its constructor's arguments)
TINY_UPSCALERS = {
    "4x-tiny-esrgan.pth": ("ESRGAN", {"in_nc": 3, "out_nc": 3, "num_filters": 8, "num_blocks": 1, "scale": 4}),
    "tiny-compact-x2.safetensors": ("Compact", {"num_in_ch": 3, "num_out_ch": 3, "num_feat": 8, "num_conv": 2,
                                                "upscale": 2}),
    "tiny-span-x4.safetensors": ("SPAN", {"num_in_ch": 3, "num_out_ch": 3, "feature_channels": 8, "upscale": 4}),
}


def write_tiny_upscalers(folder: Path, seed: int = 0, names: tuple[str, ...] | None = None) -> list[Path]:
    """Write the tiny upscalers (``names``: some of them) into ``folder``; their paths."""
    import importlib

    import torch
    from safetensors.torch import save_file

    from model_server.engine.upscale_models import import_spandrel

    import_spandrel()  # the architectures' modules import through it
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for i, name in enumerate(names or TINY_UPSCALERS):
        arch, kwargs = TINY_UPSCALERS[name]
        torch.manual_seed(seed + i)
        model = getattr(importlib.import_module(f"spandrel.architectures.{arch}"), arch)(**kwargs)
        state = {key: value.contiguous() for key, value in model.state_dict().items()}
        path = folder / name
        if name.endswith(".pth"):
            torch.save(state, path)
        else:
            save_file(state, str(path))
        written.append(path)
    return written


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path)
    for path in write_tiny_upscalers(ap.parse_args().folder):
        print(path)


if __name__ == "__main__":
    main()
