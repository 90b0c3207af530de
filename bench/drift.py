"""Numerical drift of each way of running the UNet against the float32 reference, on one seed.

    python -m bench.drift                                 # torch bf16, OpenVINO, int8 hybrid and full
    python -m bench.drift --variants openvino,int8-hybrid --steps 8 --size 512

For the SD v1.4-shaped random-weight model (bench/sd14_model.py): the reference is torch in
float32 from the float32 files. Each variant gets

- per UNet call, the reference's own inputs at every step (teacher forcing): the relative error
  of its noise prediction, ``|out - ref| / |ref|`` (L2), mean and worst over the steps;
- free-running from the same seed: the final latents decoded by the reference's float32 VAE (so
  only the UNet differs), and the image's PSNR (dB) and SSIM against the reference image.

Random weights show numerics, not image quality: a real model's images were not judged here.
Results go to bench/results/drift-NAME.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from bench.run import RESULTS, VARIANTS, machine
from bench.sd14_model import DEFAULT_DIR

PROMPT = "a photograph of an astronaut riding a horse on mars"


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else round(float(10 * np.log10(255.0**2 / mse)), 2)


def ssim(a: np.ndarray, b: np.ndarray, window: int = 7) -> float:
    """Mean SSIM over 7x7 windows of the grey images (Wang et al. 2004's constants)."""
    x, y = (img.astype(np.float64).mean(axis=2) for img in (a, b))

    def mean(img):  # box filter through an integral image
        c = np.pad(img, ((1, 0), (1, 0))).cumsum(0).cumsum(1)
        return (c[window:, window:] - c[:-window, window:] - c[window:, :-window] + c[:-window, :-window]) / window**2

    mx, my = mean(x), mean(y)
    vx, vy, cov = mean(x * x) - mx**2, mean(y * y) - my**2, mean(x * y) - mx * my
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    s = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return round(float(s.mean()), 4)


def load(model: Path, variant: str | None):
    """The model server's own loader: float32 torch for the reference, else the variant's settings."""
    import dataclasses

    from model_server.engine.diffusers_pipeline import DiffusersPipeline
    from model_server.settings import ModelServerSettings

    env = {"SD_BACKEND": "torch", "SD_DTYPE": "float32"} if variant is None else {"SD_DTYPE": "bfloat16",
                                                                                 **VARIANTS[variant]}
    settings = ModelServerSettings.from_env(env)
    return DiffusersPipeline.load(dataclasses.replace(settings, model=str(model), channels_last=False))


def denoise(pipe, unet, steps: int, size: int, record: list | None = None, replay: list | None = None):
    """Latents after ``steps`` steps from seed 0; records the UNet's inputs and outputs, or, with
    ``replay``, feeds it the reference's inputs instead and records its outputs (teacher forcing)."""
    import torch

    inner = unet.forward
    calls = []

    def forward(sample, timestep, encoder_hidden_states, *args, **kwargs):
        if replay is not None:
            sample, timestep, encoder_hidden_states = (t.to(unet.dtype) if t.is_floating_point() else t
                                                       for t in replay[len(calls)][:3])
        out = inner(sample, timestep, encoder_hidden_states, *args, **kwargs)
        result = out[0] if isinstance(out, tuple) else out.sample
        calls.append((sample.clone(), torch.as_tensor(timestep).clone(), encoder_hidden_states.clone(),
                      result.float().clone()))
        return out

    unet.forward = forward
    try:
        with torch.inference_mode():
            latents = pipe(PROMPT, num_inference_steps=steps, guidance_scale=7.5, width=size, height=size,
                           output_type="latent", generator=torch.Generator().manual_seed(0)).images
    finally:
        unet.forward = inner
    if record is not None:
        record.extend(calls)
    return latents.float(), calls


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=DEFAULT_DIR)
    ap.add_argument("--variants", default="torch,openvino,int8-hybrid,int8-full")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--name", default="sd14-random")
    args = ap.parse_args()
    import gc

    import torch

    ref = load(args.model, None)
    ref_calls: list = []
    ref_latents, _ = denoise(ref.pipe, ref.pipe.unet, args.steps, args.size, record=ref_calls)
    vae = ref.pipe.vae

    def image(latents):
        with torch.inference_mode():
            pixels = vae.decode(latents / vae.config.scaling_factor).sample
        return ((pixels[0].permute(1, 2, 0).clamp(-1, 1) + 1) * 127.5).round().byte().numpy()

    ref_image = image(ref_latents)
    del ref
    gc.collect()
    rows = []
    for variant in args.variants.split(","):
        print(f"{variant}...", file=sys.stderr)
        pipe = load(args.model, variant)
        base = pipe.ov_pipe if pipe.ov_pipe is not None else pipe.pipe
        _, forced = denoise(base, base.unet, args.steps, args.size, replay=ref_calls)
        errors = [float((out - ref[3]).norm() / ref[3].norm()) for out, ref in zip((c[3] for c in forced), ref_calls)]
        latents, _ = denoise(base, base.unet, args.steps, args.size)
        img = image(latents.to(vae.dtype))
        rows.append({"variant": variant, "backend": pipe.optimizations().get("backend"),
                     "int8": pipe.optimizations().get("openvino_int8", "none"),
                     "unet_rel_error_mean": round(float(np.mean(errors)), 5),
                     "unet_rel_error_max": round(max(errors), 5),
                     "latent_rel_error": round(float((latents - ref_latents).norm() / ref_latents.norm()), 5),
                     "psnr_db": psnr(img, ref_image), "ssim": ssim(img, ref_image)})
        print(rows[-1], file=sys.stderr)
        del pipe, base
        gc.collect()
    result = {"command": " ".join(["python -m bench.drift", *sys.argv[1:]]), "machine": machine(),
              "steps": args.steps, "size": args.size, "reference": "torch float32", "rows": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"drift-{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    md = [f"`{result['command']}` on {result['machine']['cpu']}: {args.steps} steps at {args.size}x{args.size}, "
          "seed 0, against torch float32 (random weights: numerics, not image quality)", "",
          "| variant | UNet rel. error, mean (max) over steps | final latent rel. error | PSNR dB | SSIM |",
          "|---|---|---|---|---|"]
    md += [f"| {r['variant']} | {r['unet_rel_error_mean']} ({r['unet_rel_error_max']}) | {r['latent_rel_error']} | "
           f"{r['psnr_db']} | {r['ssim']} |" for r in rows]
    (RESULTS / f"drift-{args.name}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
