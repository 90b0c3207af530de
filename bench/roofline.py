"""This CPU's floor for Stable Diffusion: counted FLOPs divided by the best measured FLOP rate.

    python -m bench.roofline                                   # this machine, 512x512
    python -m bench.roofline --compare bench/results/seed-vs-presets-512px.json
    python -m bench.roofline --isa AVX2 --name avx2 # a laptop-class instruction set (as bench.run --isa)

FLOPs of one UNet call (batch 1, and batch 2 as classifier-free guidance runs it), the VAE
decode and the TAESD decode are counted on the meta device (no weights, no time). The rate is
the best of a large matmul and of the UNet's commonest 3x3 convolution, per dtype, on the
server's thread count. Their quotient is the least time any implementation doing the same
arithmetic can take on this machine: nothing beats it without doing less arithmetic (fewer
steps, no guidance doubling, step caching, fewer pixels). The floor leaves out attention's
softmax, normalisation, activations and memory traffic, so real code stays above it.

Results go to bench/results/roofline-NAME.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from bench.sd14_model import DEFAULT_DIR

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
PNDM_EVALS = 26  # PNDM's 25 steps call the UNet 26 times (its first step is a two-call Runge-Kutta warm-up)


def count_flops(model: Path, size: int) -> dict:
    """GFLOPs per call, counted on the meta device from the model's own configs."""
    import torch
    from diffusers import AutoencoderKL, AutoencoderTiny, UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    def gflops(module, *inputs, call=None) -> float:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            (call or module)(*inputs)
        return counter.get_total_flops() / 1e9

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(model / "unet")).eval()
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(model / "vae")).eval()
        taesd_dir = model.parent / f"{model.name}-taesd"
        taesd = (AutoencoderTiny.from_config(AutoencoderTiny.load_config(taesd_dir)).eval()
                 if (taesd_dir / "config.json").exists() else AutoencoderTiny().eval())
        latent = size // 8
        out = {}
        for batch in (1, 2):
            out[f"unet_batch{batch}"] = gflops(unet, torch.randn(batch, 4, latent, latent), torch.tensor(500),
                                               torch.randn(batch, 77, unet.config.cross_attention_dim))
        sample = torch.randn(1, 4, latent, latent)
        out["vae_decode"] = gflops(vae, sample, call=vae.decode)
        out["taesd_decode"] = gflops(taesd, sample, call=taesd.decode)
    return out


INT8_FLAGS = ("amx_int8", "avx512_vnni", "avx_vnni")  # the integer dot-product units


def _rate(fn, flops: float, repeats: int) -> float:
    import torch

    with torch.inference_mode():
        fn(), fn()
        best = float("inf")
        for _ in range(repeats):
            started = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - started)
    return round(flops / best / 1e9, 1)


def best_int8_rate(threads: int, repeats: int = 5) -> dict:
    """GOP/s of a 4096-cube int8 matmul (int32 accumulation): torch's ``_int_mm``, and OpenVINO's
    CPU plugin on a quantized matmul as it runs int8 UNet layers, the better of the two."""
    import torch

    torch.set_num_threads(threads)
    rates = {"torch_int_mm_gops": _torch_int_mm(repeats)}
    try:
        rates["openvino_int8_matmul_gops"] = _openvino_int8_matmul(threads, repeats)
    except ImportError:
        pass
    return {"matmul_gflops": max(rates.values()), "conv3x3_gflops": None, "best_gflops": max(rates.values()), **rates}


def _torch_int_mm(repeats: int, probe: int = 1024, scalar_gops: float = 20.0) -> float:
    """GOP/s of torch's ``_int_mm`` at 4096 cubed, or at ``probe`` cubed where a first call there runs below
    ``scalar_gops``: without an integer dot-product unit (an AVX2-only CPU) torch falls back to a scalar loop
    (measured on AMD Zen 3: 1.0 GOP/s, so one 4096-cube call takes over two minutes)."""
    import torch

    def rate(n: int, times: int) -> float:
        a, b = (torch.randint(-127, 127, (n, n), dtype=torch.int8) for _ in range(2))
        return _rate(lambda: torch._int_mm(a, b), 2 * n**3, times)

    probed = rate(probe, 1)
    return probed if probed < scalar_gops else rate(4096, repeats)


def _openvino_int8_matmul(threads: int, repeats: int) -> float:
    import numpy as np
    import openvino as ov
    from openvino import opset13 as ops

    n = 4096
    x = ops.parameter([n, n], ov.Type.f32)
    lo, hi = ops.constant(np.float32(-4)), ops.constant(np.float32(4))
    weights = ops.convert(ops.constant(np.random.randint(-127, 127, (n, n)).astype(np.int8)), ov.Type.f32)
    scaled = ops.multiply(weights, ops.constant(np.full((n, 1), 0.01, np.float32)))
    model = ov.Model([ops.matmul(ops.fake_quantize(x, lo, hi, lo, hi, 256), scaled, False, True)], [x])
    request = ov.Core().compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                     "PERFORMANCE_HINT": "LATENCY"}).create_infer_request()
    data = np.random.randn(n, n).astype(np.float32)
    return _rate(lambda: request.infer({0: data}), 2 * n**3, repeats)


def best_rate(dtype_name: str, threads: int, repeats: int = 5) -> dict:
    """GFLOP/s of a 4096-cube matmul and of a 640->640 3x3 convolution at 32x32, batch 2."""
    import torch

    if dtype_name == "int8":
        return best_int8_rate(threads, repeats)
    torch.set_num_threads(threads)
    dtype = getattr(torch, dtype_name)

    def rate(fn, flops: float) -> float:
        return _rate(fn, flops, repeats)

    a, b = torch.randn(4096, 4096, dtype=dtype), torch.randn(4096, 4096, dtype=dtype)
    x, w = torch.randn(2, 640, 32, 32, dtype=dtype), torch.randn(640, 640, 3, 3, dtype=dtype)
    matmul = rate(lambda: a @ b, 2 * 4096**3)
    conv = rate(lambda: torch.nn.functional.conv2d(x, w, padding=1), 2 * 2 * 640 * 640 * 9 * 32 * 32)
    return {"matmul_gflops": matmul, "conv3x3_gflops": conv, "best_gflops": max(matmul, conv)}


def floors(flops: dict, rate: float) -> dict:
    """Least seconds per step, VAE decode and image for the service's configurations."""
    step2, step1 = flops["unet_batch2"] / rate, flops["unet_batch1"] / rate
    vae, taesd = flops["vae_decode"] / rate, flops["taesd_decode"] / rate
    return {
        "s_per_step_guided": round(step2, 2), "s_per_step_unguided": round(step1, 2),
        "vae_decode_s": round(vae, 2), "taesd_decode_s": round(taesd, 2),
        "quality_25_steps_s_per_image": round(PNDM_EVALS * step2 + vae, 1),
        "fast_4_steps_s_per_image": round(4 * step1 + taesd, 1),
    }


def compare(floor: dict, results: Path) -> list[dict]:
    """Each measured run of a bench.run results file against the floor of its dtype."""
    from protocol.presets import PRESETS

    rows = []
    for run in json.loads(results.read_text())["runs"]:
        dtype = "bfloat16" if run["dtype"] in ("bfloat16", "torch.bfloat16") else "float32"
        if run.get("optimizations", {}).get("openvino_int8") in ("hybrid", "full"):
            dtype = "int8"  # held to the int8 floor, though hybrid runs its matmuls in bf16
        if dtype not in floor:
            continue
        preset = PRESETS[run["preset"]] if run["config"] != "seed" else PRESETS["quality"]
        per_step = floor[dtype]["s_per_step_guided" if preset.guidance_scale > 1 else "s_per_step_unguided"]
        # Step caching and token merging skip part of the arithmetic: not held to the full floor.
        if preset.deep_cache or run.get("token_merging") or "-tome" in run["config"]:
            share = "n/a: cached steps or merged tokens do less work"
        else:
            share = f"{round(100 * per_step / run['s_per_step'])}%"
        rows.append({"config": run["config"], "dtype": dtype, "s_per_step": run["s_per_step"],
                     "floor_s_per_step": per_step, "share_of_floor": share})
    return rows


def markdown(result: dict) -> str:
    lines = [f"`{result['command']}` on {result['machine']}, {result['threads']} threads, {result['size']}x"
             f"{result['size']}", "", "GFLOPs per call: " + ", ".join(f"{k} {v:.1f}" for k, v in result["gflops"].items()),
             "", "| dtype | matmul GFLOP/s | conv GFLOP/s | floor s/step (guided) | floor s/step (no guidance) "
             "| floor VAE s | floor TAESD s | floor s/image, 25 PNDM steps | floor s/image, fast (4 steps, TAESD) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for dtype, f in result["floors"].items():
        r = result["rates"][dtype]
        lines.append(f"| {dtype} | {r['matmul_gflops']} | {r['conv3x3_gflops'] or '-'} | {f['s_per_step_guided']} | "
                     f"{f['s_per_step_unguided']} | {f['vae_decode_s']} | {f['taesd_decode_s']} | "
                     f"{f['quality_25_steps_s_per_image']} | {f['fast_4_steps_s_per_image']} |")
    if result.get("compared"):
        lines += ["", f"Measured in `{result['compared_file']}`:", "",
                  "| config | dtype | s/step measured | floor | share of the floor reached |", "|---|---|---|---|---|"]
        lines += [f"| {r['config']} | {r['dtype']} | {r['s_per_step']} | {r['floor_s_per_step']} | {r['share_of_floor']} |"
                  for r in result["compared"]]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=DEFAULT_DIR, help="SD v1.4-shaped model dir (built if absent)")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--compare", type=Path, help="a bench.run results JSON to set against the floor")
    ap.add_argument("--isa", help="cap the instruction set like bench.run --isa, e.g. AVX2")
    ap.add_argument("--name", default="this-machine")
    args = ap.parse_args()
    if args.isa and os.environ.get("ONEDNN_MAX_CPU_ISA") != args.isa.upper():
        from bench.run import isa_cap

        # The caps are read when the kernel libraries load, so they need a fresh interpreter.
        os.execvpe(sys.executable, [sys.executable, "-m", "bench.roofline", *sys.argv[1:]],
                   {**os.environ, **isa_cap(args.isa)})

    from bench.run import machine
    from bench.sd14_model import build
    from model_server.cpu import native_bf16, usable_cores

    build(args.model)
    threads = usable_cores()
    from model_server.cpu import cpu_flags

    dtypes = ["float32"] + (["bfloat16"] if native_bf16()[0] else [])  # emulated bf16 has no useful floor
    dtypes += ["int8"] if set(INT8_FLAGS) & cpu_flags() and not args.isa else []
    rates = {d: best_rate(d, threads) for d in dtypes}
    flops = count_flops(args.model, args.size)
    result = {"command": " ".join(["python -m bench.roofline", *sys.argv[1:]]), "machine": machine()["cpu"],
              "threads": threads, "size": args.size, "gflops": flops, "rates": rates,
              "floors": {d: floors(flops, rates[d]["best_gflops"]) for d in dtypes}}
    if args.compare:
        result.update(compared_file=str(args.compare), compared=compare(result["floors"], args.compare))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"roofline-{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    md = markdown(result)
    (RESULTS / f"roofline-{args.name}.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
