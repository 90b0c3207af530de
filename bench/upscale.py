"""An upscaler model, measured in one run: a Real-ESRGAN x4plus-shaped ESRGAN (23 RRDB blocks, 64 filters, the
architecture and size of RealESRGAN_x4plus.pth and 4x-UltraSharp) with random weights, 512x512 -> 2048x2048, run
as the model server runs it (model_server/engine/upscale_models.py: tiles of UPSCALE_TILE with blended overlaps,
bf16 where the CPU has it natively) and as A1111/ComfyUI's plain path would (the same library, float32, the whole
image at once). Each in a fresh process; the peak is that process's RSS, and "above idle" subtracts its RSS
once torch and the model are loaded (what an idle server already holds).

    python -m bench.upscale                       # bench/results/upscale.{json,md}
    python -m bench.upscale --side 256 --name upscale-256

Time and memory do not depend on weight values; image quality is not judged here.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from bench.models import _gib, markdown_table, write_results
from bench.run import ROOT

MODEL = (Path(os.environ.get("SD_CACHE_DIR", Path.home() / ".cache" / "sd-cpu")) / "bench" / "upscalers"
         / "RealESRGAN_x4plus-random.pth")  # a folder of its own: it is UPSCALER_DIR for bench.hires
COLUMNS = [("config", "config"), ("dtype", "dtype"), ("tiles", "tiles"), ("input", "input"), ("output", "output"),
           ("s", "seconds"), ("peak GiB", "peak_rss_gib"), ("above idle GiB", "above_idle_gib")]


def build() -> Path:
    """The stand-in's .pth, written once: spandrel's ESRGAN at RealESRGAN_x4plus's shape."""
    if not MODEL.exists():
        import torch

        from model_server.engine.upscale_models import import_spandrel

        import_spandrel()
        from spandrel.architectures.ESRGAN import ESRGAN

        MODEL.parent.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        model = ESRGAN(in_nc=3, out_nc=3, num_filters=64, num_blocks=23, scale=4)
        torch.save(model.state_dict(), MODEL)
    return MODEL


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(config: str, side: int, tile: int) -> dict:
    """One configuration in this (fresh) process."""
    import torch
    from PIL import Image

    from model_server.engine import upscale_models
    from model_server.finishing.tiles import tile_grid

    image = Image.effect_noise((side, side), 40).convert("RGB")
    if config == "ours":
        runner = upscale_models.UpscaleModels(tile, 16)
        loaded = upscale_models.load(MODEL)
        runner._loaded = loaded
        idle = _rss()
        started = time.perf_counter()
        out = runner.upscale(MODEL, image, lambda *a: None, lambda: None)
        tiles = len(tile_grid(side, side, tile, 16))
    else:
        loaded = upscale_models.load(MODEL)
        loaded.descriptor.to(torch.float32)
        loaded.dtype = torch.float32
        idle = _rss()
        started = time.perf_counter()
        import numpy as np

        tensor = torch.from_numpy(np.array(image)).permute(2, 0, 1).unsqueeze(0).float() / 255
        with torch.inference_mode():  # the whole image at once, as the library's own call runs it
            result = loaded.descriptor(tensor)[0]
        out = Image.fromarray(result.mul(255).round().clamp(0, 255).byte().permute(1, 2, 0).numpy())
        tiles = 1
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"config": config, "dtype": str(loaded.dtype).replace("torch.", ""), "tiles": tiles,
            "input": f"{side}x{side}", "output": f"{out.width}x{out.height}", "seconds": round(seconds, 2),
            "peak_rss_gib": _gib(peak), "above_idle_gib": _gib(peak - idle)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", type=int, default=512)
    ap.add_argument("--tile", type=int, default=256, help="ours: UPSCALE_TILE")
    ap.add_argument("--configs", default="ours,plain")
    ap.add_argument("--name", default="upscale")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.side, args.tile)))
        return 0
    build()
    rows = []
    for config in args.configs.split(","):
        cmd = [sys.executable, "-m", "bench.upscale", "--child", config, "--side", str(args.side),
               "--tile", str(args.tile)]
        out = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    by = {r["config"]: r for r in rows}
    if "ours" in by and "plain" in by:
        by["ours"]["speedup"] = round(by["plain"]["seconds"] / by["ours"]["seconds"], 2)
    markdown = markdown_table(rows, COLUMNS + [("speed-up", "speedup")])
    command = "python -m bench.upscale " + " ".join(sys.argv[1:])
    write_results(args.name, command.strip(), rows, markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
