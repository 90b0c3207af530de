"""Measures one pipeline configuration in this (fresh) process and prints one JSON line.

Run by ``bench/run.py``; by hand: ``python -m bench.measure --config ours --model DIR``.
Configurations:
  seed   the seed service's settings: float32, attention slicing, the model's PNDM scheduler
  ours   the model server's real loading code (model_server.engine.diffusers_pipeline), SD_* settings,
         running a preset (--preset; its steps, guidance and sampler unless --steps is given)
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import threading
import time

import psutil

PROMPT = "a photograph of an astronaut riding a horse on mars"


class PeakRss:
    """Samples this process's resident memory every 20 ms (ru_maxrss misses nothing but resets never)."""

    def __init__(self):
        self.proc = psutil.Process()
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.02)

    def __enter__(self):
        self._thread.start()
        return self

    def mark(self) -> int:
        """Peak so far, then start a new window."""
        peak = max(self.peak, self.proc.memory_info().rss)
        self.peak = 0
        return peak

    def __exit__(self, *exc):
        self._stop.set()


def load_seed(model: str):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(model, safety_checker=None, requires_safety_checker=False)
    pipe.enable_attention_slicing()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_seed(pipe, args, on_step):
    import torch

    last = [time.perf_counter()]

    def step_end(p, index, timestep, tensors):
        now = time.perf_counter()
        on_step(now - last[0])
        last[0] = now
        return tensors

    pipe(PROMPT, num_inference_steps=args.steps, guidance_scale=7.5, width=args.size, height=args.size,
         generator=torch.Generator("cpu").manual_seed(1234), callback_on_step_end=step_end)


def load_ours(model: str, dtype: str, preset: str):
    """The model server's own loader, configured like the server (SD_* variables apply).

    For a preset with parts that load on first use (fast), they are loaded here, inside load time."""
    import dataclasses

    from model_server.engine.diffusers_pipeline import DiffusersPipeline
    from model_server.settings import ModelServerSettings
    from protocol.presets import PRESETS

    pipe = DiffusersPipeline.load(dataclasses.replace(ModelServerSettings.from_env(), model=model, dtype=dtype))
    if PRESETS[preset].lcm_lora:
        pipe.load_fast_parts()
    return pipe


def run_ours(pipe, args, on_step):
    from gateway.params import ParamValidator
    from gateway.settings import GatewaySettings

    # The gateway's own resolver turns the preset into parameters, exactly as for a request, and
    # an init image goes through the model server's own upload decoding.
    fields = {"prompt": PROMPT, "seed": 1234, "steps": args.steps, "width": args.size, "height": args.size,
              "preset": args.preset, "token_merging": args.token_merging}
    init = None
    if args.strength is not None:
        import base64
        import io

        from PIL import Image

        from model_server.uploads import decode_init_image

        buffer = io.BytesIO()
        Image.effect_noise((args.size, args.size), 64).convert("RGB").save(buffer, "PNG")
        fields.update(init_image=base64.b64encode(buffer.getvalue()).decode(), strength=args.strength)
        init = decode_init_image(buffer.getvalue(), args.size, args.size, 4096 * 4096)
    params = ParamValidator(GatewaySettings()).parse_object(fields).params
    pipe.generate(params, params.seed, lambda step, seconds, preview=None: on_step(seconds), lambda: None,
                  init_image=init)
    return pipe.pipe


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", choices=["seed", "ours"], required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--preset", default="quality", help="for 'ours': quality, balanced or fast")
    ap.add_argument("--images", type=int, default=1, help="images in this process (the first is the one timed in detail)")
    ap.add_argument("--token-merging", type=float, default=None,
                    help="for 'ours': a token_merging share (default: the preset's)")
    ap.add_argument("--strength", type=float, default=None, help="for 'ours': image-to-image at this strength")
    args = ap.parse_args()

    import torch
    from tqdm import tqdm

    with PeakRss() as rss:
        started = time.perf_counter()
        pipe = load_seed(args.model) if args.config == "seed" else load_ours(args.model, args.dtype, args.preset)
        load_s = time.perf_counter() - started
        load_peak, after_load = rss.mark(), psutil.Process().memory_info().rss
        vae_times: list[float] = []

        def timed(decode):
            def timed_decode(*a, **kw):
                t = time.perf_counter()
                out = decode(*a, **kw)
                vae_times.append(time.perf_counter() - t)
                return out
            return timed_decode

        vaes = [pipe.vae] if args.config == "seed" else [pipe.pipe.vae] + (
            [pipe.fast_pipe.vae] if pipe.fast_pipe is not None else [])
        for vae in vaes:
            vae.decode = timed(vae.decode)
        steps: list[float] = []
        bar = tqdm(total=args.steps + 1, desc=f"{args.config} {args.size}px", unit="eval", file=sys.stderr)

        def on_step(seconds: float):
            steps.append(seconds)
            bar.update(1)

        started = time.perf_counter()
        (run_seed if args.config == "seed" else run_ours)(pipe, args, on_step)
        image_s = time.perf_counter() - started
        bar.close()
        gen_peak = rss.mark()
        # Later images in the same process: what a long-lived server's next jobs cost.
        again = []
        for _ in range(args.images - 1):
            if args.config != "seed":
                from model_server.memory import release_memory

                release_memory()  # as the model server's worker does after every job
            started = time.perf_counter()
            (run_seed if args.config == "seed" else run_ours)(pipe, args, lambda seconds: None)
            again.append(round(time.perf_counter() - started, 2))
        gen_peak = max(gen_peak, rss.mark())

    opts = pipe.optimizations() if args.config != "seed" else {
        "dtype": "float32", "attention": "sliced", "threads": torch.get_num_threads()}
    steady = steps[1:] or steps
    print(json.dumps({
        "config": args.config if args.config == "seed" else f"ours-{args.preset}" + (
            f"-tome{args.token_merging:g}" if args.token_merging else "") + (
            f"-img2img{args.strength:g}" if args.strength is not None else ""), "preset": args.preset,
        "token_merging": args.token_merging or 0.0, "strength": args.strength,
        "size": args.size, "steps": args.steps, "unet_evals": len(steps),
        "dtype": opts.get("dtype"), "attention": opts.get("attention"), "threads": opts.get("threads"),
        "optimizations": opts, "load_s": round(load_s, 2),
        "s_per_step": round(statistics.median(steady), 3), "first_step_s": round(steps[0], 3),
        "vae_decode_s": round(vae_times[0], 3) if vae_times else None, "s_per_image": round(image_s, 2), "next_images_s": again,
        "rss_after_load_gib": round(after_load / 2**30, 2),
        "peak_rss_load_gib": round(load_peak / 2**30, 2),
        "peak_rss_gib": round(max(load_peak, gen_peak, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
                              / 2**30, 2),
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
