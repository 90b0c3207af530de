"""A bounded load test on loopback: many clients mixing health checks, job submissions, status
polls and cancels, while generation keeps the CPU busy. It stops by itself.

    python -m bench.load_test --start --clients 32 --seconds 60      # starts a tiny-model stack
    python -m bench.load_test --url http://127.0.0.1:8000 --seconds 30

Reports statuses per route, latency percentiles (/health/live p99 above all), requests that
timed out (hung), and accepted jobs that never reached a final state (lost). Results go to
bench/results/load-NAME.json unless --no-save.
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
ALLOWED = {200, 202, 429, 503}
JOB = {"prompt": "a lighthouse", "steps": 8, "width": 256, "height": 256, "scheduler": "euler"}


class Recorder:
    def __init__(self):
        self.lock = threading.Lock()
        self.statuses = collections.Counter()
        self.latency = collections.defaultdict(list)
        self.timeouts = 0
        self.job_ids: list[str] = []
        # DELETE on a finished job deletes it: later requests for it answer 404, as they should. Which
        # 404s those are is settled at the end (another thread's DELETE may answer after this 404).
        self.deleted: set[str] = set()
        self.not_found: list[tuple[str, str]] = []  # (action, job id)

    def add(self, route: str, status, seconds: float):
        with self.lock:
            self.statuses[f"{route} {status}"] += 1
            self.latency[route].append(seconds)


def client_loop(url: str, deadline: float, rec: Recorder, rng: random.Random):
    session = requests.Session()
    actions = [("live", 40), ("health", 10), ("submit", 20), ("status", 20), ("cancel", 10)]
    names, weights = zip(*actions)
    while time.monotonic() < deadline:
        action = rng.choices(names, weights)[0]
        with rec.lock:
            known = rng.choice(rec.job_ids) if rec.job_ids else None
        if action in ("status", "cancel") and known is None:
            action = "submit"
        method, path, body = {
            "live": ("GET", "/health/live", None), "health": ("GET", "/health", None),
            "submit": ("POST", "/v1/jobs", dict(JOB, seed=rng.randrange(2**31))),
            "status": ("GET", f"/v1/jobs/{known}", None), "cancel": ("DELETE", f"/v1/jobs/{known}", None),
        }[action]
        started = time.monotonic()
        try:
            r = session.request(method, url + path, json=body, timeout=30)
        except requests.Timeout:
            with rec.lock:
                rec.timeouts += 1
            continue
        if r.headers.get("X-Deleted") == "true":
            with rec.lock:
                rec.deleted.add(known)
        if r.status_code == 404 and known is not None:
            with rec.lock:
                rec.not_found.append((action, known))
                rec.latency[action].append(time.monotonic() - started)
        else:
            rec.add(action, r.status_code, time.monotonic() - started)
        if action == "submit" and r.status_code == 202:
            with rec.lock:
                rec.job_ids.append(r.json()["id"])
        time.sleep(rng.uniform(0, 0.05))


def settle(url: str, job_ids: list[str], limit_s: float, deleted: set[str] = frozenset()) -> list[str]:
    """Cancel what is left, then wait for every accepted job to reach a final state.

    A finished job that DELETE removed (this run's own doing) has reached its final state."""
    gone = set(deleted)
    for job_id in set(job_ids) - gone:
        if requests.delete(f"{url}/v1/jobs/{job_id}", timeout=10).headers.get("X-Deleted") == "true":
            gone.add(job_id)
    deadline = time.monotonic() + limit_s
    pending = set(job_ids) - gone
    while pending and time.monotonic() < deadline:
        for job_id in list(pending):
            r = requests.get(f"{url}/v1/jobs/{job_id}", timeout=10)
            if r.status_code == 200 and r.json()["state"] in ("succeeded", "failed", "cancelled"):
                pending.discard(job_id)
        time.sleep(0.5)
    return sorted(pending)


def percentile(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))] if values else 0.0


def run(url: str, clients: int, seconds: float, seed: int = 1) -> dict:
    rec = Recorder()
    deadline = time.monotonic() + seconds
    threads = [threading.Thread(target=client_loop, args=(url, deadline, rec, random.Random(seed + i)), daemon=True)
               for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 60)
    for action, job_id in rec.not_found:  # gone because this run deleted it, or truly not found
        rec.statuses["after-delete 404" if job_id in rec.deleted else f"{action} 404"] += 1
    lost = settle(url, rec.job_ids, 120, rec.deleted)
    latency = {route: {"n": len(v), "p50_ms": round(statistics.median(v) * 1000, 1),
                       "p99_ms": round(percentile(v, 99) * 1000, 1), "max_ms": round(max(v) * 1000, 1)}
               for route, v in rec.latency.items()}
    unexpected = {k: n for k, n in rec.statuses.items()
                  if int(k.split()[1]) not in ALLOWED and not k.startswith("after-delete 404")}
    return {"clients": clients, "seconds": seconds, "requests": sum(rec.statuses.values()),
            "statuses": dict(sorted(rec.statuses.items())), "unexpected_statuses": unexpected,
            "timeouts": rec.timeouts, "jobs_accepted": len(rec.job_ids), "jobs_lost": lost, "latency": latency}


def start_stack(tmp: Path, model: str):
    from tests.helpers import free_port, start_gateway, start_model_server, wait_ready

    model_port, http_port = free_port(), free_port()
    env = {"SD_MODEL": model, "MODEL_SERVER_QUEUE_SIZE": 16, "MAX_QUEUED_PER_CLIENT": 0}
    server = start_model_server(tmp, model_port, **env)
    gateway = start_gateway(tmp, http_port, model_port, GATEWAY_WORKERS=2, GATEWAY_THREADS=32)
    url = f"http://127.0.0.1:{http_port}"
    wait_ready(url, server, timeout=300)
    return url, (gateway, server)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url")
    ap.add_argument("--start", action="store_true", help="start a model server (tiny model) and gateway")
    ap.add_argument("--model", default="tiny", help="SD_MODEL for --start")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--name", default="tiny")
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args(argv)
    procs = ()
    tmp = Path(tempfile.mkdtemp(prefix="sd-cpu-load-"))
    url = args.url
    if args.start:
        url, procs = start_stack(tmp, args.model)
    try:
        result = run(url, args.clients, args.seconds)
    finally:
        for proc in procs:
            proc.stop()
    result["command"] = " ".join(["python -m bench.load_test", *(argv if argv is not None else sys.argv[1:])])
    if not args.no_save:
        out = ROOT / "bench" / "results" / f"load-{args.name}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    ok = not result["unexpected_statuses"] and not result["timeouts"] and not result["jobs_lost"]
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
