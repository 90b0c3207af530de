"""Models per request, measured in one run: what LoRAs cost per step, what a model switch costs
(time, peak memory, the one-time conversions a model's first load triggers), and the turbo preset
on a full-size SD-Turbo stand-in beside the fast preset on SD v1.4's.

    python -m bench.models                    # every part, 512x512; bench/results/models-*.{json,md}
    python -m bench.models --parts lora --steps 4

Each part runs in a fresh process (peak memory is per process; a conversion's own child process is
reported apart). The stand-ins are random-weight models of the real architectures (bench/sd14_model.py):
time and memory do not depend on weight values, image quality is not judged here.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time

from bench.run import RESULTS, ROOT, machine
from bench.sd14_model import DEFAULT_DIR, TURBO_DIR

CACHE = DEFAULT_DIR.parent / "models-cache"  # the switch part's own SD_CACHE_DIR (its conversions are measured)
LORAS = DEFAULT_DIR.parent / "sd14-loras"
CHECKPOINT = DEFAULT_DIR.parent / "sd14-single-file" / "sd14-merge.safetensors"
PROMPT = "a photograph of an astronaut riding a horse on mars"


def _gib(n: int) -> float:
    return round(n / 2**30, 2)


def _children_peak() -> int:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024


def _image(pipe, rss, **fields) -> dict:
    """One image through the model server's pipeline; its s/step (median), time, VAE time and peak."""
    from protocol.messages import GenerationParams

    params = GenerationParams(**{"prompt": PROMPT, "seed": 1234, "width": 512, "height": 512, **fields})
    steps: list[float] = []
    started = time.perf_counter()
    pipe.generate(params, params.seed, lambda step, seconds, preview=None: steps.append(seconds), lambda: None)
    seconds = time.perf_counter() - started
    steady = steps[1:] or steps
    return {"s_per_step": round(statistics.median(steady), 3), "s_per_image": round(seconds, 2),
            "unet_evals": len(steps), "engine": pipe.engine(params), "peak_rss_gib": _gib(rss.mark())}


def _settings(**overrides):
    from model_server.settings import ModelServerSettings

    return dataclasses.replace(ModelServerSettings.from_env(), **overrides)


def worker_lora(args) -> list[dict]:
    """s/step without LoRAs, with one and with two (rank 32, kohya layout, UNet and text encoder), and
    without again while they stay loaded (switched off: what later jobs pay for the cache). After a
    warm-up image, ``--rounds`` interleaved rounds; each row is the median over them."""
    from bench.measure import PeakRss
    from model_server.engine.diffusers_pipeline import DiffusersPipeline
    from protocol.messages import LoraRef

    cases = {"0": [], "1": ["ink"], "2": ["ink", "pencil"], "0 (2 loaded, off)": []}
    runs: dict[str, list[dict]] = {case: [] for case in cases}
    with PeakRss() as rss:
        pipe = DiffusersPipeline.load(_settings(model=str(DEFAULT_DIR), lora_dir=str(LORAS)))
        _image(pipe, rss, steps=args.steps)  # warm-up: the first image at a size sets kernels up
        rss.mark()
        for _ in range(args.rounds):
            for case, names in cases.items():
                pipe.apply_loras([(n, LORAS / f"{n}.safetensors", 0.8) for n in names])
                row = _image(pipe, rss, steps=args.steps, loras=[LoraRef(name=n, weight=0.8) for n in names])
                runs[case].append({**row, "loras_mb": pipe.optimizations()["loras_mb"]})
    rows = []
    for case, measured in runs.items():
        rows.append({**measured[-1], "part": "lora", "loras": case,
                     "s_per_step": round(statistics.median(r["s_per_step"] for r in measured), 3),
                     "s_per_step_rounds": [r["s_per_step"] for r in measured],
                     "s_per_image": round(statistics.median(r["s_per_image"] for r in measured), 2),
                     "peak_rss_gib": max(r["peak_rss_gib"] for r in measured)})
    return rows


def worker_switch(args) -> list[dict]:
    """A model server's ModelSet switching between three models twice: the first round converts."""
    from bench.measure import PeakRss
    from model_server.factory import make_model_set
    from model_server.loading.progress import LoadProgress
    from protocol.messages import GenerationParams

    settings = _settings(model=str(DEFAULT_DIR), cache_dir=str(CACHE), single_file_config=str(DEFAULT_DIR),
                         models=f"sd-turbo={TURBO_DIR}, sd14-merge={CHECKPOINT}")
    rows = []
    with PeakRss() as rss:
        models = make_model_set(settings)
        started = time.perf_counter()
        models.load_default(LoadProgress())
        rows.append({"part": "switch", "round": 0, "to": "sd14 (start)",
                     "seconds": round(time.perf_counter() - started, 2),
                     "peak_rss_gib": _gib(rss.mark()), "rss_after_gib": _gib(models_rss()),
                     "conversion_children_peak_gib": _gib(_children_peak()), **_conversions(models)})
        for round_ in (1, 2):
            for name in ("sd-turbo", "sd14-merge", ""):
                started = time.perf_counter()
                _, switch, _ = models.prepare(GenerationParams(prompt="a", seed=1, model=name), lambda text: None)
                rows.append({"part": "switch", "round": round_, "from": switch.from_model, "to": switch.to_model,
                             "seconds": round(time.perf_counter() - started, 2), "peak_rss_gib": _gib(rss.mark()),
                             "rss_after_gib": _gib(switch.rss_bytes),
                             "conversion_children_peak_gib": _gib(_children_peak()), **_conversions(models)})
    return rows


def models_rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def _conversions(models) -> dict:
    opts = models.optimizations()
    return {k: opts[k] for k in ("weights", "conversion_seconds", "openvino_ir", "openvino_conversion_seconds",
                                 "backend", "load_seconds") if k in opts}


def worker_turbo(args) -> list[dict]:
    """The turbo preset (1 and 4 steps) on the SD-Turbo stand-in; the fast preset on SD v1.4's."""
    from bench.measure import PeakRss
    from bench.sd14_model import build_extras
    from model_server.engine.diffusers_pipeline import DiffusersPipeline

    lcm, taesd = build_extras(DEFAULT_DIR)
    rows = []
    for model, preset, steps, guidance, scheduler in ((TURBO_DIR, "turbo", 1, 0.0, "default"),
                                                      (TURBO_DIR, "turbo", 4, 0.0, "default"),
                                                      (DEFAULT_DIR, "fast", 4, 1.0, "lcm")):
        with PeakRss() as rss:
            started = time.perf_counter()
            pipe = DiffusersPipeline.load(_settings(model=str(model), lcm_lora=str(lcm), tiny_vae=str(taesd)))
            if preset == "fast":
                pipe.load_fast_parts()
            load = time.perf_counter() - started
            rss.mark()
            _image(pipe, rss, steps=steps, guidance_scale=guidance, scheduler=scheduler, preset=preset)  # warm-up
            row = _image(pipe, rss, steps=steps, guidance_scale=guidance, scheduler=scheduler, preset=preset)
            rows.append({"part": "turbo", "model": model.name, "preset": preset, "steps": steps,
                         "load_s": round(load, 2), **row})
        del pipe
    return rows


WORKERS = {"lora": worker_lora, "switch": worker_switch, "turbo": worker_turbo}


def prepare(parts: list[str], fresh: bool) -> None:
    """The stand-ins (once, outside the repo): SD v1.4's and SD-Turbo's, two LoRAs, a single file."""
    from bench.sd14_model import build, build_sd_turbo

    build(DEFAULT_DIR)
    build_sd_turbo(TURBO_DIR)
    if not (LORAS / "pencil.safetensors").exists():
        from diffusers import StableDiffusionPipeline

        from model_server.engine.tiny_model import KOHYA_TE_TARGETS, KOHYA_UNET_TARGETS, write_random_lora

        for name, seed in (("ink", 1), ("pencil", 2)):
            pipe = StableDiffusionPipeline.from_pretrained(DEFAULT_DIR)
            write_random_lora(LORAS / f"{name}.safetensors", pipe, rank=32, seed=seed, std=0.01,
                              targets=(KOHYA_UNET_TARGETS, KOHYA_TE_TARGETS))
            del pipe
    if not CHECKPOINT.exists():
        from diffusers import StableDiffusionPipeline

        from bench.ldm_checkpoint import write_ldm_checkpoint

        write_ldm_checkpoint(StableDiffusionPipeline.from_pretrained(DEFAULT_DIR), CHECKPOINT)
    if "switch" in parts and fresh:
        shutil.rmtree(CACHE, ignore_errors=True)


# Each part's table: (header, cell) per column.
COLUMNS = {
    "lora": [("backend setting", "backend_setting"), ("LoRAs", "loras"), ("runs on", "engine"),
             ("s/step (median)", "s_per_step"), ("rounds", lambda r: r.get("s_per_step_rounds", "")),
             ("s/image", "s_per_image"), ("LoRA MB", "loras_mb"), ("peak GiB", "peak_rss_gib")],
    "switch": [("round", "round"), ("to", "to"), ("seconds", "seconds"), ("peak GiB (server)", "peak_rss_gib"),
               ("RSS after GiB", "rss_after_gib"), ("conversion child peak GiB", "conversion_children_peak_gib"),
               ("weights / IR", lambda r: f"{r.get('weights', '')} / {r.get('openvino_ir', '-')}")],
    "turbo": [("model", "model"), ("preset", "preset"), ("steps", "steps"), ("runs on", "engine"),
              ("load s", "load_s"), ("s/step", "s_per_step"), ("s/image", "s_per_image"),
              ("peak GiB", "peak_rss_gib")],
}


def table(rows: list[dict]) -> str:
    """Markdown: one table per part measured, in COLUMNS' order."""
    tables = []
    for part, columns in COLUMNS.items():
        mine = [r for r in rows if r["part"] == part]
        if not mine:
            continue
        lines = ["| " + " | ".join(head for head, _ in columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(str(cell(r) if callable(cell) else r[cell]) for _, cell in columns) + " |"
                  for r in mine]
        tables.append("\n".join(lines))
    return "\n\n".join(tables)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="lora,switch,turbo")
    ap.add_argument("--steps", type=int, default=4, help="steps of the LoRA part's images")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the LoRA part")
    ap.add_argument("--keep-cache", action="store_true", help="switch part: keep earlier conversions")
    ap.add_argument("--name", default="models-per-request")
    ap.add_argument("--worker", choices=list(WORKERS), help=argparse.SUPPRESS)
    ap.add_argument("--backend-setting", default="auto", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        for row in WORKERS[args.worker](args):
            print(json.dumps({**row, "backend_setting": args.backend_setting}), flush=True)
        return 0
    parts = args.parts.split(",")
    prepare(parts, fresh=not args.keep_cache)
    rows = []
    runs = [("lora", backend) for backend in ("torch", "auto") if "lora" in parts]
    runs += [(part, "auto") for part in ("switch", "turbo") if part in parts]
    for part, backend in runs:
        env = {**os.environ, "SD_BACKEND": backend, "LOG_LEVEL": "WARNING"}
        cmd = [sys.executable, "-m", "bench.models", "--worker", part, "--steps", str(args.steps),
               "--rounds", str(args.rounds), "--backend-setting", backend]
        out = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True, check=True)
        rows += [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
        print(table(rows), file=sys.stderr)
    write_results(args.name, "python -m bench.models " + " ".join(argv or sys.argv[1:]), rows, table(rows))
    print(table(rows))
    return 0


def markdown_table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """``rows`` as a Markdown table of ``columns`` (title, key); a missing value is an empty cell."""
    lines = ["| " + " | ".join(title for title, _ in columns) + " |", "|" + " --- |" * len(columns)]
    return "\n".join(lines + ["| " + " | ".join(str(r.get(key, "")) for _, key in columns) + " |" for r in rows])


def fresh_row(module: str, *args: str) -> dict:
    """One configuration measured in a fresh process (``python -m MODULE ARGS``, its logs quiet): the JSON line it
    prints last, echoed to stderr as it comes."""
    out = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env={**os.environ, "LOG_LEVEL": "WARNING"},
                         stdout=subprocess.PIPE, text=True, check=True)
    row = json.loads(out.stdout.strip().splitlines()[-1])
    print(row, file=sys.stderr, flush=True)
    return row


def write_results(name: str, command: str, rows: list[dict], markdown: str, **extra) -> None:
    """bench/results/NAME.json (the machine, the command, the rows) and NAME.md (the command, the machine, the
    table)."""
    result = {"machine": machine(), "command": command, **extra, "rows": rows}
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    about = result["machine"]
    (RESULTS / f"{name}.md").write_text(
        f"`{command}` on {about['cpu']} ({', '.join(about['isa_flags'])}), {about['logical_cpus']} vCPU, "
        f"torch {about['torch']}\n\n{markdown}\n", encoding="utf-8")


if __name__ == "__main__":
    raise SystemExit(main())
