#!/usr/bin/env python3
"""Checks a running stack's model servers through its HTTP API (used by scripts/docker-smoke.sh).

``fleet-check.py URL spread N``: N ready servers, and 4N jobs land on every one of them.
``fleet-check.py URL survive N``: within 30 s, N servers ready and 3 new jobs all succeed.
``fleet-check.py URL rejoin N``: within 60 s, N servers ready again, and jobs land on all of them.
Standard library only: it runs on the CI host, outside any virtual environment.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request


def call(url: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as response:
        return json.load(response)


def ready_servers(base: str) -> dict[str, str]:
    """server_id -> name of every server that answers with its model loaded."""
    try:
        health = call(f"{base}/health")
    except OSError:
        return {}
    return {s["server_id"]: s["name"] for s in health.get("servers", [])
            if s["alive"] and s.get("model_state") == "ready"}


def wait_ready(base: str, count: int, seconds: float) -> dict[str, str]:
    deadline = time.monotonic() + max(seconds, 5)
    while time.monotonic() < deadline:
        servers = ready_servers(base)
        if len(servers) == count:
            return servers
        time.sleep(1)
    sys.exit(f"expected {count} ready model servers, /health shows {ready_servers(base)}")


def submit(base: str) -> str:
    """One job; a 429 (one client may have MAX_QUEUED_PER_CLIENT jobs waiting) is waited out."""
    for _ in range(60):
        try:
            return call(f"{base}/v1/jobs", {"prompt": "a cat", "steps": 2, "width": 64, "height": 64})["id"]
        except urllib.error.HTTPError as exc:
            if exc.code != 429:
                raise
            time.sleep(float(exc.headers.get("Retry-After") or 1))
    sys.exit("still refused with 429 after 60 tries")


def run_jobs(base: str, count: int) -> list[str]:
    ids = [submit(base) for _ in range(count)]
    for job_id in ids:
        deadline = time.monotonic() + 120
        while (state := call(f"{base}/v1/jobs/{job_id}")["state"]) in ("queued", "running"):
            if time.monotonic() > deadline:
                sys.exit(f"job {job_id} still {state} after 120 s")
            time.sleep(0.5)
        if state != "succeeded":
            sys.exit(f"job {job_id} {state}")
    return ids


def main(base: str, check: str, count: int) -> None:
    deadline = time.monotonic() + {"spread": 10, "survive": 30, "rejoin": 60}[check]
    while True:
        servers = wait_ready(base, count, deadline - time.monotonic())
        ids = run_jobs(base, 3 if check == "survive" else 4 * count)
        used = {job_id[:8] for job_id in ids}
        if not used <= set(servers):
            sys.exit(f"jobs ran on {sorted(used)}, ready servers are {servers}")
        # Each gateway worker finds a returning server at its next look at the socket directory
        # (MODEL_SERVER_DISCOVERY_SECONDS): until then its jobs go to the others.
        if check == "survive" or used == set(servers) or time.monotonic() > deadline:
            break
        time.sleep(2)
    if check != "survive" and used != set(servers):
        sys.exit(f"jobs ran on {sorted(used)}, ready servers are {servers}")
    print(f"{check}: {len(ids)} jobs succeeded on {len(used)} of {len(servers)} model servers "
          f"({', '.join(sorted(servers.values()))})")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("url")
    ap.add_argument("check", choices=("spread", "survive", "rejoin"))
    ap.add_argument("count", type=int)
    args = ap.parse_args()
    main(args.url, args.check, args.count)
