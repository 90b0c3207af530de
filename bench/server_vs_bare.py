"""The model server's job time against the bare pipeline call, interleaved to cancel machine drift.

    python -m bench.server_vs_bare [--rounds 2] [--jobs 3] [--steps 2]

Each round runs ``--jobs`` images through a fresh model server (submitted over ZMQ, no gateway:
``run.py --http`` measures the HTTP and gateway part) and then ``--jobs`` images through the
same pipeline code called directly in a fresh process, on the SD v1.4-shaped model. A fresh
process's first image is dropped on both sides (warm-up). Step times on a shared 2-vCPU machine
drift by several percent over minutes, hence the alternation.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.sd14_model import DEFAULT_DIR

ROOT = Path(__file__).resolve().parents[1]
PARAMS = dict(prompt="a photograph of an astronaut riding a horse", seed=1)

_BARE = """
import json, sys, threading, time
from model_server.engine.diffusers_pipeline import DiffusersPipeline
from model_server.settings import ModelServerSettings
from protocol.messages import GenerationParams
times = []
def work():  # in a worker thread, as in the model server
    pipe = DiffusersPipeline.load(ModelServerSettings.from_env())
    for i in range(int(sys.argv[1])):
        params = GenerationParams(**json.loads(sys.argv[2]))
        started = time.perf_counter()
        pipe.generate(params, params.seed, lambda *a, **k: None, lambda: None)
        times.append(time.perf_counter() - started)
thread = threading.Thread(target=work)
thread.start()
thread.join()
print(json.dumps(times))
"""


def server_jobs(model: Path, jobs: int, params: dict) -> list[float]:
    from gateway.model_client import ModelClient
    from protocol.messages import GenerationParams
    from tests.helpers import free_port, start_model_server

    logs = Path("/tmp/sd-cpu-bench-logs")
    logs.mkdir(exist_ok=True)
    port = free_port()
    server = start_model_server(logs, port, SD_MODEL=str(model), SD_CACHE_DIR=Path.home() / ".cache" / "sd-cpu")
    client = ModelClient(f"tcp://127.0.0.1:{port}")
    try:
        while client.ping(timeout=5).model_state.value != "ready":
            time.sleep(0.5)
        times = []
        for _ in range(jobs):
            job = client.submit(GenerationParams(**params))
            while not (view := client.get_job(job.job_id)).state.terminal:
                time.sleep(0.2)
            times.append(view.finished_at - view.started_at)
        return times
    finally:
        client.close()
        server.stop()


def bare_jobs(model: Path, jobs: int, params: dict) -> list[float]:
    env = dict(os.environ, SD_MODEL=str(model), HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", _BARE, str(jobs), json.dumps(params)], cwd=ROOT, env=env,
                         stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=DEFAULT_DIR)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--jobs", type=int, default=3)
    ap.add_argument("--steps", type=int, default=2)
    args = ap.parse_args()
    params = dict(PARAMS, steps=args.steps)
    server, bare = [], []
    for r in range(args.rounds):
        s, b = server_jobs(args.model, args.jobs, params), bare_jobs(args.model, args.jobs, params)
        print(f"round {r + 1}: server {[round(t, 2) for t in s]}  bare {[round(t, 2) for t in b]}", file=sys.stderr)
        server += s[1:]
        bare += b[1:]
    result = {"server_median_s": round(statistics.median(server), 3), "bare_median_s": round(statistics.median(bare), 3),
              "server_s": [round(t, 3) for t in server], "bare_s": [round(t, 3) for t in bare]}
    result["server_vs_bare_pct"] = round(100 * (result["server_median_s"] / result["bare_median_s"] - 1), 2)
    result["command"] = " ".join(["python -m bench.server_vs_bare", *sys.argv[1:]])
    (ROOT / "bench" / "results" / "server-vs-bare-interleaved.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
