"""The peer engine in the bench: optimum-intel's OpenVINO Stable Diffusion pipeline (SD's or SDXL's, by the
model's family), as FastSD CPU runs it.

Run by ``bench.run --configs peer-openvino,...``; it pulls another torch than ours (optimum-intel
needs torchvision, which needs torch 2.14.1), so it runs in its own environment, which
``ensure_env`` builds once under ``~/.cache/sd-cpu/bench/peer-venv`` from the registries.

Inside that environment, ``python bench/peer_openvino.py --model DIR ...`` exports the same SD
v1.4-shaped model once (``export=True``, optimum-intel's default precision, no 8-bit; ``--weights default``: its
own default, int8 weights for SDXL's UNet), reshapes it
static to the size with batch 1 (the UNet becomes batch 2 for guidance) as FastSD CPU does,
compiles, runs the same prompt, seed and steps as ``bench.measure`` and prints one JSON line in
its format.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

PEER_PACKAGES = ["optimum-intel[openvino]==2.2.0", "diffusers==0.39.0", "psutil==7.2.2"]
ENV_DIR = Path.home() / ".cache" / "sd-cpu" / "bench" / "peer-venv"
PROMPT = "a photograph of an astronaut riding a horse on mars"


def ensure_env(python: str = sys.executable) -> Path:
    """The peer's interpreter, its environment made once (a few minutes; torch 2.14.1 comes from the
    registry or the machine's wheel store)."""
    peer = ENV_DIR / "bin" / "python"
    marker = ENV_DIR / "peer-packages.json"
    if peer.exists() and marker.exists() and json.loads(marker.read_text()) == PEER_PACKAGES:
        return peer
    subprocess.run([python, "-m", "venv", "--clear", str(ENV_DIR)], check=True)
    subprocess.run([str(peer), "-m", "pip", "install", "-q", "--upgrade", "pip"], check=True)
    subprocess.run([str(peer), "-m", "pip", "install", "-q", *PEER_PACKAGES], check=True)
    marker.write_text(json.dumps(PEER_PACKAGES))
    return peer


def _pipeline_class(model: str):
    """optimum-intel's class for the model's family: SDXL's has its own (two text encoders)."""
    from optimum.intel import OVStableDiffusionPipeline, OVStableDiffusionXLPipeline

    index = json.loads((Path(model) / "model_index.json").read_text(encoding="utf-8"))
    return OVStableDiffusionXLPipeline if "XL" in index.get("_class_name", "") else OVStableDiffusionPipeline


def measure(args) -> dict:
    import psutil
    import torch

    OVStableDiffusionPipeline = _pipeline_class(args.model)  # noqa: N806  (the class, SD's or SDXL's)

    proc, peak = psutil.Process(), [0]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.02)

    threading.Thread(target=sample, daemon=True).start()
    export = Path(args.model).parent / (f"{Path(args.model).name}-optimum-openvino"
                                        + ("-default" if args.weights == "default" else ""))
    started = time.perf_counter()
    if not (export / "model_index.json").exists():  # exported once, like FastSD CPU's cached model
        # "default": optimum-intel's own choice, which keeps int8 weights (INT8_ASYM) for every part of a billion
        # parameters or more (SDXL's UNet) and the others as they are; "float": none (SD 1.x's UNet either way).
        eight_bit = {"load_in_8bit": False} if args.weights == "float" else {}
        OVStableDiffusionPipeline.from_pretrained(args.model, export=True, compile=False,
                                                  **eight_bit).save_pretrained(export)
    # f32 as the plugin picks it on a CPU without bf16 (a laptop); set here when the bench emulates one,
    # since under an ISA cap the plugin would still pick bf16 from the real CPU's flags and fail.
    ov_config = {"INFERENCE_PRECISION_HINT": "f32"} if args.precision == "f32" else {}
    pipe = OVStableDiffusionPipeline.from_pretrained(export, compile=False, ov_config=ov_config)
    # Static batch 1 (the UNet's 2 with guidance); without guidance (SDXL-Turbo) the UNet runs batch 1, which a
    # static reshape of the guided batch refuses: the batch stays dynamic there.
    pipe.reshape(batch_size=1 if args.guidance > 1 else -1, height=args.size, width=args.size,
                 num_images_per_prompt=1)
    pipe.compile()
    load_s, load_peak, after_load = time.perf_counter() - started, peak[0], proc.memory_info().rss
    steps, vae = [], []
    decode = pipe.vae.decode

    def timed_decode(*a, **kw):
        t = time.perf_counter()
        out = decode(*a, **kw)
        vae.append(time.perf_counter() - t)
        return out

    pipe.vae.decode = timed_decode
    last = [time.perf_counter()]

    def on_step(p, index, timestep, tensors):
        now = time.perf_counter()
        steps.append(now - last[0])
        last[0] = now
        return tensors

    if args.warmup:  # as ours: the first image at a size sets kernels up (a dynamic batch compiles on first use)
        pipe(PROMPT, num_inference_steps=1, guidance_scale=args.guidance, height=args.size, width=args.size)
        steps.clear()
        vae.clear()
    started = last[0] = time.perf_counter()
    pipe(PROMPT, num_inference_steps=args.steps, guidance_scale=args.guidance, height=args.size, width=args.size,
         generator=torch.Generator().manual_seed(1234), callback_on_step_end=on_step)
    image_s = time.perf_counter() - started
    stop.set()
    import openvino as ov

    # The CPU plugin computes in bf16 by itself where the CPU has it (no precision is set, as in FastSD CPU).
    native_bf16 = "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES") and args.precision != "f32"
    steady = steps[1:] or steps
    return {"config": "peer-openvino", "preset": "quality", "size": args.size, "steps": args.steps,
            "unet_evals": len(steps), "dtype": "bfloat16" if native_bf16 else "float32", "attention": "openvino",
            "threads": None, "optimizations": {"backend": "optimum-intel", "export": str(export),
                              "weights": args.weights},
            "load_s": round(load_s, 2), "s_per_step": round(statistics.median(steady), 3),
            "first_step_s": round(steps[0], 3), "vae_decode_s": round(vae[0], 3) if vae else None,
            "s_per_image": round(image_s, 2), "next_images_s": [],
            "rss_after_load_gib": round(after_load / 2**30, 2), "peak_rss_load_gib": round(load_peak / 2**30, 2),
            "peak_rss_gib": round(max(peak[0], resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**30, 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--guidance", type=float, default=7.5, help="0: one-step models (SDXL-Turbo), no guidance")
    ap.add_argument("--warmup", action="store_true", help="a 1-step image first, not measured (few-step runs)")
    ap.add_argument("--weights", choices=["float", "default"], default="float",
                    help="float: no weight compression; default: optimum-intel's (int8 weights for parts of 1e9 "
                         "parameters or more)")
    ap.add_argument("--precision", choices=["auto", "f32"], default="auto",
                    help="auto: the plugin's choice (bf16 where the CPU has it); f32: as on a CPU without bf16")
    args = ap.parse_args()
    print(json.dumps(measure(args)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
