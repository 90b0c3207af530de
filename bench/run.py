"""Side-by-side CPU benchmark: the seed's settings vs ours, each in a fresh process, one run.

    python -m bench.run                      # 512x512, 25 steps: seed vs ours, table + JSON
    python -m bench.run --isa AVX2 --dtype float32 --name laptop-avx2
    python -m bench.run --configs ours --http  # also: HTTP end to end vs the bare pipeline
    python -m bench.run --preset fast          # seed (25 steps) vs our fast preset (4 steps)
    python -m bench.run --configs peer-openvino,ours+torch:quality,ours+openvino:quality,ours+int8-hybrid:quality \
        --steps 4                              # the peer engine, the UNet's backends and int8 (SD_INT8)
    python -m bench.run --configs ours+openvino:quality,ours+int8-ov:quality --steps 4
                                               # a model published as OpenVINO int8 (the stand-in exported so)

Builds (once, cached outside the repo) an SD v1.4-shaped random-weight pipeline; timing and
memory do not depend on weight values. Results go to bench/results/NAME.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.sd14_model import DEFAULT_DIR

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def machine() -> dict:
    import psutil
    import torch

    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
    return {"cpu": cpu, "logical_cpus": psutil.cpu_count(), "physical_cores": psutil.cpu_count(logical=False),
            "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "isa_flags": sorted(flags & {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}),
            "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA"),
            "aten_cpu_capability": os.environ.get("ATEN_CPU_CAPABILITY"), "torch": torch.__version__,
            "python": platform.python_version()}


def isa_cap(isa: str) -> dict:
    """Environment that caps every kernel library torch uses to ``isa``, to emulate a lesser CPU.

    ONEDNN_MAX_CPU_ISA alone caps the convolutions and bf16 matmuls, but float32 matmuls go
    through MKL and attention, norms and activations through ATen's own vectorised kernels,
    which keep using AVX-512 unless capped too."""
    env = {"ONEDNN_MAX_CPU_ISA": isa.upper()}
    if isa.upper() in ("AVX2", "AVX2_VNNI"):  # AVX2_VNNI: a laptop's AVX-VNNI int8 dot products, still no AVX-512
        env.update(ATEN_CPU_CAPABILITY="avx2", MKL_ENABLE_INSTRUCTIONS="AVX2")
    return env


# ours+VARIANT:PRESET runs the model server with these settings.
# "openvino" is the UNet in its own precision whatever its size (SD_INT8=auto would give SDXL's int8 weights).
VARIANTS = {"torch": {"SD_BACKEND": "torch"}, "openvino": {"SD_BACKEND": "openvino", "SD_INT8": "none"},
            "int8-hybrid": {"SD_BACKEND": "openvino", "SD_INT8": "hybrid"},
            "int8-full": {"SD_BACKEND": "openvino", "SD_INT8": "full"},
            "int8-weights": {"SD_BACKEND": "openvino", "SD_INT8": "weights"}}


# ours+VARIANT:PRESET on the stand-in as the OpenVINO organisation publishes models (engine/openvino_ir_model):
# exported once in optimum-intel's all-IR layout, int8 as their *-int8-ov repositories (the UNet hybrid-quantized,
# every other part's weights int8), int8 weights only (int8w-ov: no calibration) or float (*-fp16-ov).
IR_VARIANTS = {"int8-ov": "hybrid", "int8w-ov": "weights", "fp16-ov": "none"}


def ir_model(model: Path, variant: str, env: dict) -> Path:
    dest = model.parent / f"{model.name}-{variant}"
    if not (dest / "model_index.json").exists():
        subprocess.run([sys.executable, "-m", "model_server.engine.openvino_ir_export", str(model), str(dest),
                        "--int8", IR_VARIANTS[variant]], cwd=ROOT, env=env, check=True)
    return dest


def measure(config: str, args, env: dict) -> dict:
    from protocol.presets import PRESETS

    if config == "peer-openvino":  # optimum-intel's pipeline, in its own environment (bench/peer_openvino.py)
        from bench.peer_openvino import ensure_env

        cmd = [str(ensure_env()), str(ROOT / "bench" / "peer_openvino.py"), "--model", str(args.model),
               "--steps", str(args.steps or 25), "--size", str(args.size),
               "--precision", "f32" if args.dtype == "float32" else "auto"]  # float32: a CPU without bf16
        out = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True, check=True)
        return {**json.loads(out.stdout.strip().splitlines()[-1]), "backend": "optimum-intel"}

    ours, preset = config.startswith("ours"), config.partition(":")[2].partition("@")[0] or args.preset
    steps = args.steps or (PRESETS[preset].steps if ours else 25)  # the seed always had 25 steps
    backend = config.partition(":")[0].partition("+")[2]  # ours+openvino:quality: SD_BACKEND=openvino
    model = ir_model(args.model, backend, env) if backend in IR_VARIANTS else args.model
    cmd = [sys.executable, "-m", "bench.measure", "--config", "ours" if ours else config, "--model",
           str(model), "--steps", str(steps), "--size", str(args.size), "--dtype", args.dtype,
           "--preset", preset, "--images", str(args.images)]
    if ours and args.token_merging is not None:
        cmd += ["--token-merging", str(args.token_merging)]
    strength = config.split("@")[1] if "@" in config else None  # ours:quality@0.5: img2img at 0.5
    if ours and strength is not None:
        cmd += ["--strength", strength]
    out = subprocess.run(cmd, cwd=ROOT, env={**env, **VARIANTS.get(backend, {})}, stdout=subprocess.PIPE, text=True,
                         check=True)
    row = json.loads(out.stdout.strip().splitlines()[-1])
    row["backend"] = row.get("optimizations", {}).get("backend", "torch")
    if backend:
        row["config"] += f"+{backend}"
    return row


def http_overhead(args, env: dict, requests_n: int = 4) -> dict:
    """Wall time of POST /generate minus the model server's own run time for the same job."""
    import requests

    from tests.helpers import free_port, start_gateway, start_model_server, wait_ready

    logs = Path("/tmp/sd-cpu-bench-logs")
    logs.mkdir(exist_ok=True)
    model_port, http_port = free_port(), free_port()
    from protocol.presets import PRESETS

    steps = args.steps or PRESETS[args.preset].steps
    server = start_model_server(logs, model_port, SD_MODEL=str(args.model), SD_DTYPE=args.dtype,
                                **{k: env[k] for k in ("ONEDNN_MAX_CPU_ISA", "SD_LCM_LORA", "SD_TINY_VAE")
                                   if k in env})
    gateway = start_gateway(logs, http_port, model_port)
    url = f"http://127.0.0.1:{http_port}"
    try:
        wait_ready(url, server, timeout=600)
        rows = []
        for i in range(requests_n):
            started = time.perf_counter()
            r = requests.post(url + "/generate", json={"prompt": "a photograph of an astronaut riding a horse",
                                                       "steps": steps, "preset": args.preset,
                                                       "width": args.size,
                                                       "height": args.size, "seed": 1234 + i}, timeout=3600)
            wall = time.perf_counter() - started
            r.raise_for_status()
            job = requests.get(f"{url}/v1/jobs/{r.headers['X-Job-Id']}", timeout=10).json()
            rows.append({"http_s": round(wall, 3), "job_s": round(job["finished_at"] - job["started_at"], 3)})
            print(f"http {i + 1}/{requests_n}: {rows[-1]}", file=sys.stderr)
    finally:
        gateway.stop()
        server.stop()
    overhead = [r["http_s"] - r["job_s"] for r in rows]
    return {"requests": rows, "median_overhead_s": round(statistics.median(overhead), 3),
            "median_http_s": round(statistics.median(r["http_s"] for r in rows), 3)}


def table(rows: list[dict], seed: dict | None) -> str:
    head = ("| config | backend | steps | dtype | attention | threads | load s | s/step | VAE s | s/image | peak RSS GiB "
            "(load) | RSS after load GiB | vs seed |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        ratio = f"{seed['s_per_image'] / r['s_per_image']:.2f}x" if seed else "-"
        lines.append(f"| {r['config']} | {r.get('backend', 'torch')} | {r['steps']} | {r['dtype']} | {r['attention']} | {r['threads']} | {r['load_s']} | "
                     f"{r['s_per_step']} | {r['vae_decode_s']} | {r['s_per_image']} | {r['peak_rss_gib']} "
                     f"({r['peak_rss_load_gib']}) | {r['rss_after_load_gib']} | {ratio} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=DEFAULT_DIR, help="SD v1.4-shaped model dir (built if absent)")
    ap.add_argument("--configs", default="seed,ours",
                    help="comma-separated: seed, ours (with --preset) or ours:PRESET, e.g. seed,ours:quality,ours:fast; "
                         "ours:PRESET@S is image-to-image at strength S; ours+VARIANT:PRESET runs a backend "
                         f"({', '.join([*VARIANTS, *IR_VARIANTS])}); peer-openvino is optimum-intel's pipeline "
                         "(FastSD CPU's engine)")
    ap.add_argument("--preset", default="quality", help="the preset 'ours' runs: quality, balanced or fast")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--steps", type=int, default=None, help="default: 25 for the seed, the preset's for ours")
    ap.add_argument("--dtype", default="auto", help="for 'ours': auto, float32 or bfloat16")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--images", type=int, default=1, help="images per process; later ones are reported as next_images_s")
    ap.add_argument("--token-merging", type=float, default=None, help="for 'ours': a token_merging share (ToMe)")
    ap.add_argument("--isa", help="cap the instruction set (oneDNN, MKL and ATen), e.g. AVX2 to emulate a laptop, "
                                  "AVX2_VNNI one with AVX-VNNI")
    ap.add_argument("--http", action="store_true", help="also measure HTTP end to end vs the bare pipeline")
    ap.add_argument("--name", default=None, help="results file name (default: derived from the options)")
    args = ap.parse_args()

    env = dict(os.environ, HF_HUB_OFFLINE="1")
    if args.isa:
        env.update(isa_cap(args.isa))
    print(f"the SD v1.4-shaped random model and fast-preset parts in {args.model} (built once)...", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "bench.sd14_model", str(args.model)], cwd=ROOT, env=env, check=True)
    # Ours runs as deployed: the fast preset's parts loaded (random stand-ins of the real shapes).
    env.setdefault("SD_LCM_LORA", str(args.model.parent / f"{args.model.name}-lcm-lora"))
    env.setdefault("SD_TINY_VAE", str(args.model.parent / f"{args.model.name}-taesd"))

    if any(c.startswith("ours") for c in args.configs.split(",")):
        # The one-time bf16 conversion (if this CPU gets bf16) happens here, not inside a measurement.
        subprocess.run([sys.executable, "-c", (
            "from model_server.engine.model_loader import bf16_copy, choose_dtype; import torch, sys; "
            "from model_server.settings import ModelServerSettings as S; "
            f"s = S(model={str(args.model)!r}, dtype={args.dtype!r}); "
            "print(bf16_copy(s.model, s) if choose_dtype(s.dtype)[0] == torch.bfloat16 else 'float32: no copy')")],
            cwd=ROOT, env=env, check=True)
    variants = {c.partition(":")[0].partition("+")[2] for c in args.configs.split(",")}
    for variant in variants & set(IR_VARIANTS):
        ir_model(args.model, variant, env)  # exported once, ahead of the measurements
    for variant in variants - {"", "torch", *IR_VARIANTS}:
        # So are the one-time OpenVINO conversion and int8 quantization (of the weights the server would load).
        int8 = VARIANTS[variant].get("SD_INT8", "none")
        subprocess.run([sys.executable, "-c", (
            "from model_server.engine.model_loader import bf16_copy, choose_dtype; import torch; "
            "from model_server.engine.openvino_backend import int8_ir, ir_for; "
            "from model_server.settings import ModelServerSettings as S; "
            f"s = S(model={str(args.model)!r}, dtype={args.dtype!r}, int8={int8!r}); "
            "bf16 = choose_dtype(s.dtype)[0] == torch.bfloat16; src = bf16_copy(s.model, s)[0] if bf16 else s.model; "
            "ir = ir_for(src, s, 'bf16' if bf16 else 'f32'); print(ir, ir_for(src, s, 'bf16' if bf16 else 'f32', "
            "part='vae_decoder')); "
            "print(int8_ir(src, ir[0], s) if s.int8 != 'none' else '')")],
            cwd=ROOT, env=env, check=True)
    rows = []
    name = args.name or f"{args.size}px-{args.preset}-{args.dtype}" + (f"-{args.isa.lower()}" if args.isa else "")
    RESULTS.mkdir(parents=True, exist_ok=True)
    for rep in range(args.repeat):
        for config in args.configs.split(","):
            print(f"[{rep + 1}/{args.repeat}] {config}: fresh process", file=sys.stderr)
            rows.append(measure(config, args, env))
            # Kept as we go: a failure later in a long run must not lose what was measured.
            (RESULTS / f"{name}.partial.json").write_text(json.dumps(rows, indent=2) + "\n")
    seeds = [r for r in rows if r["config"] == "seed"]
    seed = min(seeds, key=lambda r: r["s_per_image"]) if seeds else None
    result = {"command": " ".join(["python -m bench.run", *sys.argv[1:]]), "machine": machine(),
              "settings": {"size": args.size, "steps": args.steps, "preset": args.preset, "isa": args.isa},
              "runs": rows}
    if args.http:
        result["http"] = http_overhead(args, env)
        ours = [r for r in rows if r["config"].startswith("ours")]
        if ours:
            # Like with like: a fresh process's first image runs slower on both sides, so with
            # --images N the bare side is the median of the later images, and the HTTP side the
            # median of the requests after the first.
            later = [t for r in ours for t in r.get("next_images_s", [])]
            bare = statistics.median(later or [r["s_per_image"] for r in ours])
            http = statistics.median([r["http_s"] for r in result["http"]["requests"][1:]]
                                     or [result["http"]["median_http_s"]])
            result["http"].update(bare_pipeline_s=bare, http_after_first_s=http,
                                  overhead_vs_bare_pct=round(100 * (http - bare) / bare, 2))
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"{name}.partial.json").unlink(missing_ok=True)
    md = f"`{result['command']}` on {result['machine']['cpu']} ({result['machine']['logical_cpus']} CPUs)\n\n"
    md += table(rows, seed) + "\n"
    if args.http:
        md += f"\nHTTP end to end: {json.dumps(result['http'])}\n"
    (RESULTS / f"{name}.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
