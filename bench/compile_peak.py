"""The OpenVINO compile's memory peak, with and without releasing the IR's mapped pages as they are read.

    python -m bench.compile_peak UNET.xml [--rounds 2]

Each measurement runs in a fresh process: read the IR (mapped), reshape to SD's batch-2 64x64 latents,
compile for the CPU in bf16 while a thread samples RSS every 20 ms, then one call. ``released`` wraps the
compile in ``residency.released_while_read`` as the model server does (model_server/engine/openvino_compiled.py).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
import psutil


def measure(ir: str, released: bool) -> dict:
    import openvino as ov

    from model_server.engine.residency import released_while_read

    core = ov.Core()
    model = core.read_model(ir)
    model.reshape({"sample": [2, 4, 64, 64], "timestep": [], "encoder_hidden_states": [2, 77, 768]})
    peak, done = [0], threading.Event()

    def sample():
        process = psutil.Process()
        while not done.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(0.02)

    threading.Thread(target=sample, daemon=True).start()
    started = time.perf_counter()
    files = {os.path.realpath(ir[:-4] + ".bin")} if released else set()
    with released_while_read(files):
        compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "bf16", "INFERENCE_NUM_THREADS": 2,
                                                     "PERFORMANCE_HINT": "LATENCY"})
    seconds = time.perf_counter() - started
    compiled.create_infer_request().infer({
        "sample": np.random.rand(2, 4, 64, 64).astype(np.float32), "timestep": np.array(500.0, dtype=np.float32),
        "encoder_hidden_states": np.random.rand(2, 77, 768).astype(np.float32)})
    done.set()
    time.sleep(0.05)
    return {"released": released, "compile_s": round(seconds, 2), "peak_gib": round(peak[0] / 2**30, 2),
            "after_call_gib": round(psutil.Process().memory_info().rss / 2**30, 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ir")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--one", choices=("kept", "released"), help=argparse.SUPPRESS)  # the child's own run
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure(args.ir, args.one == "released")))
        return 0
    for _ in range(args.rounds):
        for mode in ("kept", "released"):
            out = subprocess.run([sys.executable, "-m", "bench.compile_peak", args.ir, "--one", mode], check=True,
                                 capture_output=True, text=True).stdout
            print(out.strip().splitlines()[-1], flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
