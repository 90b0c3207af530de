"""Two UNet IRs compiled side by side in one process: seconds per call and their graphs' op counts.

    python -m bench.ir_compare PEER_UNET.xml OUR_UNET.xml [--precision bf16]

Shows whether a speed difference between two OpenVINO UNets comes from the graph (same runtime,
same settings, same inputs: batch 2, 64x64 latents, 77 tokens). Run it a few times in both
orders: on a machine whose speed drifts, one pair proves nothing (docs/performance.md).
"""

from __future__ import annotations

import argparse
import collections
import time

import numpy as np
import psutil

OPS = ("ScaledDotProductAttention", "MatMul", "Convolution", "Convert", "GroupNormalization")


def measure(core, path: str, precision: str, calls: int = 3) -> dict:
    model = core.read_model(path)
    ops = collections.Counter(op.get_type_name() for op in model.get_ops())
    shapes = {}
    for i in model.inputs:
        name = i.get_any_name()
        rank = i.get_partial_shape().rank.get_length()
        shapes[i] = [2, 4, 64, 64] if "sample" in name else [2, 77, 768] if "encoder" in name else [1] * rank
    model.reshape(shapes)
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": 2,
                                                 "PERFORMANCE_HINT": "LATENCY"})
    del model
    request = compiled.create_infer_request()
    feed = {}
    for i in compiled.inputs:
        shape = list(i.get_shape())
        kind = np.int64 if "i64" in str(i.get_element_type()) else np.float32
        feed[i] = (np.asarray(np.random.rand(*shape), dtype=np.float32) if "sample" in i.get_any_name()
                   or "encoder" in i.get_any_name() else np.full(shape, 500, dtype=kind))
    request.infer(feed)  # the first call sets up kernels and buffers
    started = time.perf_counter()
    for _ in range(calls):
        request.infer(feed)
    return {"path": path, "s_per_call": round((time.perf_counter() - started) / calls, 3),
            "rss_gib": round(psutil.Process().memory_info().rss / 2**30, 2), **{k: ops[k] for k in OPS}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("first")
    ap.add_argument("second")
    ap.add_argument("--precision", default="bf16")
    args = ap.parse_args()
    import openvino as ov

    core = ov.Core()
    for path in (args.first, args.second):
        print(measure(core, path, args.precision), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
