"""The memory budget's predictions against what the jobs took: the real model server (``python -m model_server``)
with the SD v1.4-shaped random-weight model (bench.sd14_model), an empty table of measured peaks, and a run of
jobs of several sizes and modes, each twice (the first is predicted from the prior or from other sizes, the
second from its own measurement). Each job's view says its predicted peak, the prediction's basis and the
measured peak (the server's RSS while it ran, sampled every 50 ms).

    python -m bench.memory                        # bench/results/memory-budget.{json,md}
    SD_BACKEND=torch python -m bench.memory --name memory-budget-torch

Time and memory do not depend on weight values.
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.models import _gib, markdown_table, write_results
from bench.run import ROOT
from bench.sd14_model import DEFAULT_DIR, build

JOBS = [(512, 512, "txt2img"), (512, 768, "txt2img"), (768, 768, "txt2img"), (512, 512, "img2img"),
        (1024, 1024, "txt2img")]
COLUMNS = [("job", "job"), ("try", "attempt"), ("basis", "basis"), ("predicted GiB", "predicted_gib"),
           ("measured GiB", "measured_gib"), ("error", "error")]


def _init_image(width: int, height: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.effect_noise((width, height), 64).convert("RGB").save(buffer, "PNG")
    return buffer.getvalue()


def _wait_ready(client, server, seconds: float = 900) -> None:
    """Until the model server has loaded its model (it binds its socket only after its imports: on a busy
    machine the first pings find no one)."""
    from gateway.model_client import ModelServerUnavailable

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and server.poll() is None:
        try:
            if client.ping(timeout=30).model_state.value == "ready":
                return
        except ModelServerUnavailable:
            pass
        time.sleep(1)
    raise SystemExit(f"the model server did not become ready (exit code {server.poll()})")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--name", default="memory-budget")
    args = ap.parse_args(argv)
    model = build(DEFAULT_DIR)
    cache = Path(os.environ.get("SD_CACHE_DIR", Path.home() / ".cache" / "sd-cpu"))
    for old in cache.glob("peaks-*.json"):  # an empty table: the first of each job is a prediction
        old.unlink()
    from gateway.model_client import ModelClient
    from protocol.messages import GenerationParams, JobState

    with tempfile.TemporaryDirectory() as folder:
        address = f"ipc://{folder}/model.sock"
        env = {**os.environ, "SD_MODEL": str(model), "MODEL_SERVER_BIND": address, "SD_CACHE_DIR": str(cache),
               "OUTPUTS_DIR": "", "HF_HUB_OFFLINE": "1"}
        server = subprocess.Popen([sys.executable, "-m", "model_server"], cwd=ROOT, env=env,
                                  stdout=subprocess.DEVNULL, stderr=open(Path(folder) / "server.log", "wb"))
        client = ModelClient(address, timeout=30.0)
        rows = []
        try:
            _wait_ready(client, server)
            for width, height, mode in JOBS:
                for attempt in range(1, args.repeat + 1):
                    extra = ({"init_image": _init_image(width, height)} if mode == "img2img" else {})
                    params = GenerationParams(prompt="a lighthouse", seed=1, width=width, height=height,
                                              steps=args.steps, mode=mode, strength=0.6 if mode == "img2img" else 0.75)
                    job = client.submit(params, **extra)
                    while not job.state.terminal:
                        time.sleep(0.5)
                        job = client.get_job(job.job_id)
                    assert job.state is JobState.SUCCEEDED, job.error
                    predicted, measured = job.memory.predicted_peak_bytes, job.memory.peak_rss_bytes
                    rows.append({"job": f"{mode} {width}x{height}", "attempt": attempt, "basis": job.memory.basis,
                                 "predicted_gib": _gib(predicted), "measured_gib": _gib(measured),
                                 "error": f"{(predicted - measured) / measured:+.0%}"})
                    print(rows[-1], flush=True)
            pong = client.ping()
        finally:
            client.close()
            server.terminate()
            server.wait(30)
    errors = [abs(float(r["error"].rstrip("%"))) for r in rows if r["attempt"] > 1]
    table = markdown_table(rows, COLUMNS) + (
        f"\n\nBudget {pong.memory_budget.source}; predictions of jobs measured before (try 2): worst error "
        f"{max(errors):.0f}%." if errors else "")
    write_results(args.name, "python -m bench.memory " + " ".join(argv or sys.argv[1:]), rows, table,
                  engine=pong.optimizations.get("backend"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
