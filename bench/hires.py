"""The hires fix against a native generation at the larger size, measured in one run on the full-size SD v1.4
stand-in (bench/sd14_model.py): 512x512 in 25 steps then 1024x1024 by a second pass of 10 steps at strength 0.5
(5 run), with the latent upscaler and with the Real-ESRGAN x4plus-shaped model (bench/upscale.py), against
1024x1024 in 25 steps; and 512x512 alone, whose peak is the model's own running peak. Each configuration in a
fresh process, after a warm-up image at its sizes; the server's own pipeline and finishing code.

    python -m bench.hires                    # bench/results/hires.{json,md}

Time and memory do not depend on weight values; image quality is not judged here.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time

from bench.models import _gib, fresh_row, markdown_table, write_results

STEPS = 25
CONFIGS = {  # name -> (side, hires upscaler or None)
    "512": (512, None), "native 1024": (1024, None), "hires latent": (512, "Latent"),
    "hires esrgan": (512, "RealESRGAN_x4plus-random"),
}
COLUMNS = [("config", "config"), ("runs on", "engine"), ("output", "output"), ("s/image", "s_per_image"),
           ("vs native", "vs_native"), ("peak GiB", "peak_rss_gib")]


def worker(name: str) -> dict:
    from bench.measure import PeakRss
    from bench.sd14_model import DEFAULT_DIR
    from bench.upscale import MODEL
    from model_server.engine.diffusers_pipeline import DiffusersPipeline
    from model_server.engine.upscale_models import UpscaleModels
    from model_server.finishing.hires import generate_hires
    from model_server.finishing.upscalers import Upscalers
    from model_server.settings import ModelServerSettings
    from protocol.messages import GenerationParams, HiresFix

    side, upscaler = CONFIGS[name]
    with PeakRss() as rss:
        settings = dataclasses.replace(ModelServerSettings.from_env(), model=str(DEFAULT_DIR), lcm_lora="none",
                                       tiny_vae="none")
        pipe = DiffusersPipeline.load(settings)
        upscalers = Upscalers(str(MODEL.parent), lambda: UpscaleModels(settings.upscale_tile, 16))
        hires = HiresFix(scale=2, steps=10, strength=0.5, upscaler=upscaler) if upscaler else None

        def run(steps: int, second: int):
            params = GenerationParams(prompt="a lighthouse on a cliff at dusk", seed=1234, steps=steps, width=side,
                                      height=side, hires=msgspec_replace(hires, steps=second) if hires else None)
            started = time.perf_counter()
            if hires:
                image = generate_hires(pipe, upscalers, params, params.seed, lambda *a, **k: None, lambda: None,
                                       lambda text: None)
            else:
                image = pipe.generate(params, params.seed, lambda *a, **k: None, lambda: None)
            return image, time.perf_counter() - started, params

        run(1, 2)  # warm-up at both sizes
        rss.mark()
        image, seconds, params = run(STEPS, 10)
        return {"config": name, "engine": pipe.engine(params), "output": f"{image.width}x{image.height}",
                "s_per_image": round(seconds, 1), "peak_rss_gib": _gib(rss.mark())}


def msgspec_replace(struct, **changes):
    import msgspec

    return msgspec.structs.replace(struct, **changes)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--name", default="hires")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker)))
        return 0
    from bench.sd14_model import DEFAULT_DIR, build as build_sd14
    from bench.upscale import build as build_esrgan

    build_sd14(DEFAULT_DIR)
    build_esrgan()
    rows = [fresh_row("bench.hires", "--worker", name) for name in args.configs.split(",")]
    native = next((r["s_per_image"] for r in rows if r["config"] == "native 1024"), None)
    for r in rows:
        if native and r["config"].startswith("hires"):
            r["vs_native"] = round(r["s_per_image"] / native, 2)
    markdown = markdown_table(rows, COLUMNS)
    write_results(args.name, "python -m bench.hires " + " ".join(sys.argv[1:]), rows, markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
