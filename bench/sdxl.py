"""The SDXL family, measured in one run on full-size random-weight stand-ins (bench/sdxl_model.py): SDXL-Turbo's
512x512 one step (the same UNet as SDXL base, on trailing timesteps) with the full VAE and with TAESDXL, and SDXL
base at 1024x1024 with guidance; per backend; each configuration in a fresh process, load included in its peak.

    python -m bench.sdxl                                   # torch and OpenVINO, bench/results/sdxl-*.{json,md}
    python -m bench.sdxl --configs torch:turbo --isa AVX2 --dtype float32 --name sdxl-avx2
    python -m bench.sdxl --configs peer:turbo,openvino:turbo,peer:base,openvino:base --name sdxl-peer
    python -m bench.sdxl --configs torch:switch,openvino:switch --name sdxl-switch
    python -m bench.sdxl --configs openvino:base,int8w-ov:base --name sdxl-ir   # as a model published as IR
    python -m bench.sdxl --configs default:base,openvino:base --name sdxl-default  # SD_BACKEND, SD_INT8 as shipped

Rows: load (s, with the one-time bf16 copy and OpenVINO conversion when they are made, and the conversion
child's peak apart), s/step (median after a warm-up image), s/image, the peak RSS of the server process. Time and
memory do not depend on weight values; image quality is not judged here (see bench/drift.py for numerical drift).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time

from bench.models import _children_peak, _gib, _image, write_results
from bench.run import IR_VARIANTS, ROOT, ir_model, isa_cap
from bench.sdxl_model import SDXL_DIR, build, build_taesdxl

# name -> (preset, side, steps, guidance, tiny decoder)
CASES = {"turbo": ("turbo", 512, 1, 0.0, False), "turbo+taesdxl": ("turbo", 512, 1, 0.0, True),
         "base": ("quality", 1024, 4, 5.0, False)}
COLUMNS = [("config", "config"), ("dtype", "dtype"), ("runs on", "engine"), ("size", "size"), ("steps", "steps"),
           ("load s", "load_s"), ("conversion child peak GiB", "conversion_children_peak_gib"),
           ("s/step", "s_per_step"), ("s/image", "s_per_image"), ("peak GiB", "peak_rss_gib")]


def peer(case: str, args, env: dict, weights: str = "float") -> dict:
    """The peer (optimum-intel's OpenVINO SDXL pipeline, static shapes, as FastSD CPU runs it) on the same
    stand-in, in its own environment (bench/peer_openvino.py); its full VAE on OpenVINO. ``weights``: "float"
    (exported with no weight compression) or "default" (optimum-intel's default export: int8 UNet weights)."""
    from bench.peer_openvino import ensure_env

    preset, side, steps, guidance, tiny = CASES[case]
    cmd = [str(ensure_env()), str(ROOT / "bench" / "peer_openvino.py"), "--model", str(SDXL_DIR), "--steps",
           str(steps), "--size", str(side), "--guidance", str(guidance), "--weights", weights,
           "--precision", "f32" if args.dtype == "float32" else "auto", "--warmup"]  # ours has a warm-up image too
    out = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True, check=True)
    row = json.loads(out.stdout.strip().splitlines()[-1])
    name = "peer" if weights == "float" else "peer-default"
    return {**row, "config": f"{name}:{case}", "size": f"{side}x{side}", "engine": "optimum-intel openvino",
            "conversion_children_peak_gib": "(in load)"}


def switches(args) -> list[dict]:
    """A model server's ModelSet switching SD v1.4 -> SDXL -> SD v1.4, twice: the first round makes the caches,
    the second runs from them (seconds, the server's peak and its memory after)."""
    from bench.measure import PeakRss
    from bench.models import models_rss
    from bench.sd14_model import DEFAULT_DIR
    from model_server.factory import make_model_set
    from model_server.loading.progress import LoadProgress
    from model_server.settings import ModelServerSettings
    from protocol.messages import GenerationParams

    settings = dataclasses.replace(ModelServerSettings.from_env(), model=str(DEFAULT_DIR), models=f"sdxl={SDXL_DIR}",
                                   backend=args.worker.split(":")[0])
    rows = []
    with PeakRss() as rss:
        models = make_model_set(settings)
        models.load_default(LoadProgress())
        rss.mark()
        for round_ in (1, 2):
            for name in ("sdxl", ""):
                started = time.perf_counter()
                _, switch, _ = models.prepare(GenerationParams(prompt="a", seed=1, model=name), lambda text: None)
                rows.append({"config": f"{args.worker} round {round_}", "engine": f"to {switch.to_model}",
                             "load_s": round(time.perf_counter() - started, 1), "peak_rss_gib": _gib(rss.mark()),
                             "dtype": models.optimizations().get("dtype"),
                             "size": f"RSS after {_gib(models_rss())} GiB"})
    return rows


def worker(args) -> dict:
    """One BACKEND:CASE in this process: load, a warm-up image at the case's size, the measured image."""
    from bench.measure import PeakRss
    from model_server.engine.diffusers_pipeline import DiffusersPipeline
    from model_server.settings import ModelServerSettings

    backend, case = args.worker.split(":")
    backend, _, int8 = backend.partition("+int8-")  # openvino+int8-weights: SD_INT8=weights
    if backend == "default":  # the server's own choices for this CPU (SD_BACKEND and SD_INT8 auto)
        backend, int8 = "auto", "auto"
    model = SDXL_DIR
    if backend in IR_VARIANTS:  # int8w-ov: the stand-in as a model published as OpenVINO IR (exported by main)
        model, backend = ir_model(SDXL_DIR, backend, dict(os.environ)), "auto"
    preset, side, steps, guidance, tiny = CASES[case]
    with PeakRss() as rss:
        started = time.perf_counter()
        settings = dataclasses.replace(ModelServerSettings.from_env(), model=str(model), backend=backend,
                                       int8=int8 or "none",
                                       tiny_vae=str(build_taesdxl()) if tiny else "none", lcm_lora="none",
                                       **({"dtype": args.dtype} if args.dtype else {}))
        pipe = DiffusersPipeline.load(settings)
        load = {"load_s": round(time.perf_counter() - started, 1), "load_peak_gib": _gib(rss.mark()),
                "conversion_children_peak_gib": _gib(_children_peak()), "dtype": pipe.optimizations()["dtype"]}
        fields = dict(preset=preset, steps=steps, guidance_scale=guidance, width=side, height=side)
        _image(pipe, rss, **{**fields, "steps": 1})  # warm-up: kernels set up for this size
        rss.mark()
        row = _image(pipe, rss, **fields)
    return {"config": args.worker, "size": f"{side}x{side}", "steps": steps, **load, **row,
            "peak_rss_gib": max(row["peak_rss_gib"], load["load_peak_gib"])}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default=",".join(f"{b}:{c}" for b in ("torch", "openvino") for c in CASES),
                    help="BACKEND:CASE,... (backends: default (the server's choices), torch, openvino, "
                         "openvino+int8-MODE, peer, "
                         "peer-default (its default export: int8 UNet weights), "
                         "or a published "
                         f"OpenVINO layout: {', '.join(IR_VARIANTS)}; cases: "
                         + ", ".join(CASES) + "; BACKEND:switch switches SD v1.4 <-> SDXL twice)")
    ap.add_argument("--isa", help="cap the kernels to this ISA (AVX2: a laptop)")
    ap.add_argument("--dtype", help="float32 or bfloat16 (default: the server's choice for this CPU)")
    ap.add_argument("--name", default="sdxl")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        for row in switches(args) if args.worker.endswith(":switch") else [worker(args)]:
            print(json.dumps(row), flush=True)
        return 0
    build()
    if "switch" in args.configs:
        from bench.sd14_model import DEFAULT_DIR, build as build_sd14

        build_sd14(DEFAULT_DIR)
    for variant in {config.split(":")[0] for config in args.configs.split(",")} & set(IR_VARIANTS):
        ir_model(SDXL_DIR, variant, dict(os.environ))  # exported once, outside the measurements
    rows = []
    for config in args.configs.split(","):
        env = {**os.environ, "LOG_LEVEL": "WARNING", **(isa_cap(args.isa) if args.isa else {})}
        try:
            if config.startswith(("peer:", "peer-default:")):
                weights = "default" if config.startswith("peer-default:") else "float"
                rows.append(peer(config.split(":")[1], args, env, weights))
            else:
                cmd = [sys.executable, "-m", "bench.sdxl", "--worker", config] + (
                    ["--dtype", args.dtype] if args.dtype else [])
                out = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True, check=True)
                rows += [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
        except subprocess.CalledProcessError as exc:  # recorded, not hidden: e.g. killed for memory (-9)
            rows.append({"config": config, "engine": f"failed (exit {exc.returncode})"})
        print(table(rows), file=sys.stderr)
    write_results(args.name, "python -m bench.sdxl " + " ".join(argv or sys.argv[1:]), rows, table(rows),
                  isa_cap=args.isa)
    print(table(rows))
    return 0


def table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(head for head, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(str(r.get(key, "")) for _, key in COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
