"""Soak: N sequential generations through the HTTP API, sampling the model server's resident
memory (from /health) to show it stays flat.

    python -m bench.soak --start --count 100       # tiny model, 64x64, 2 steps per image
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]


def run(url: str, count: int, size: int, steps: int) -> dict:
    rss = []
    for i in range(count):
        r = requests.post(url + "/generate", json={"prompt": f"soak {i}", "seed": i, "width": size, "height": size,
                                                   "steps": steps}, timeout=600)
        r.raise_for_status()
        rss.append(requests.get(url + "/health", timeout=10).json()["memory"]["rss_bytes"])
    mib = [round(b / 2**20, 1) for b in rss]
    warm = mib[min(9, len(mib) - 1)]
    return {"count": count, "size": size, "steps": steps, "rss_mib_after_each": mib,
            "rss_mib_after_10": warm, "rss_mib_last": mib[-1], "rss_mib_max": max(mib),
            "growth_after_warmup_mib": round(mib[-1] - warm, 1)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--url")
    ap.add_argument("--start", action="store_true")
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--count", type=int, default=100)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--save", default="bench/results/soak-tiny.json")
    args = ap.parse_args(argv)
    procs, url = (), args.url
    if args.start:
        from bench.load_test import start_stack

        url, procs = start_stack(Path(tempfile.mkdtemp(prefix="sd-cpu-soak-")), args.model)
    try:
        result = run(url, args.count, args.size, args.steps)
    finally:
        for proc in procs:
            proc.stop()
    result["command"] = " ".join(["python -m bench.soak", *(argv if argv is not None else sys.argv[1:])])
    if args.save:
        (ROOT / args.save).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "rss_mib_after_each"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
