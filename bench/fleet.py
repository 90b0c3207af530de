"""Throughput with more model servers: the real gateway (gunicorn) in front of N model servers.

    python -m bench.fleet --pipeline fake --servers 1,2,3       # routing: jobs/min must reach 0.9 x N x one
    python -m bench.fleet --pipeline sd14 --layouts 1x2,2x1     # this CPU: one server with 2 threads
                                                                # against two with 1 thread each

The fake pipeline sleeps through its steps, so its figures show the placement and routing, not the
CPU. The sd14 layouts run the SD v1.4-shaped random-weight model (bench.sd14_model) at 512x512:
images per hour and the peak resident memory summed over the servers, which is the sizing advice
the README gives. Results go to bench/results/NAME.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
PYTHON = sys.executable
GUNICORN = str(Path(sys.executable).with_name("gunicorn"))


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Stack:
    """N model server processes and one gunicorn gateway over them, on loopback."""

    def __init__(self, folder: Path, servers: list[dict]):
        self.procs, self.ports = [], []
        base = {k: v for k, v in os.environ.items() if not k.startswith(("SD_", "MODEL_SERVER_", "GATEWAY_"))}
        base.update(PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", MAX_QUEUED_PER_CLIENT="0", MODEL_SERVER_QUEUE_SIZE="64")
        for i, extra in enumerate(servers):
            port = _port()
            env = {**base, "MODEL_SERVER_BIND": f"tcp://127.0.0.1:{port}", "OUTPUTS_DIR": str(folder / f"out{i}"),
                   **{k: str(v) for k, v in extra.items()}}
            self._start(folder / f"model-{i}.log", [PYTHON, "-m", "model_server"], env)
            self.ports.append(port)
        http = _port()
        self.url = f"http://127.0.0.1:{http}"
        env = {**base, "GATEWAY_BIND": f"127.0.0.1:{http}", "RATE_LIMIT_ENABLED": "false", "GATEWAY_WORKERS": "2",
               "MODEL_SERVER_ADDRESS": ",".join(f"tcp://127.0.0.1:{p}" for p in self.ports)}
        self._start(folder / "gateway.log", [GUNICORN, "-c", "gunicorn.conf.py"], env)

    def _start(self, log: Path, args: list[str], env: dict) -> None:
        self.procs.append(subprocess.Popen(args, cwd=ROOT, env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT))

    def wait_ready(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                servers = requests.get(self.url + "/health", timeout=5).json().get("servers", [])
                if sum(s.get("model_state") == "ready" for s in servers) == count:
                    return
            except (requests.RequestException, ValueError):
                pass
            time.sleep(1)
        raise TimeoutError(f"{count} model servers not ready within {timeout:g} s")

    def peak_rss_bytes(self) -> int:
        servers = requests.get(self.url + "/health", timeout=10).json()["servers"]
        return sum(s.get("rss_bytes", 0) for s in servers), sum(_peak(p) for p in self.procs[:-1])

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


def _peak(proc: subprocess.Popen) -> int:
    try:
        for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run_jobs(url: str, count: int, job: dict) -> dict:
    """Submit ``count`` jobs at once, wait for all; jobs per minute from first submit to last finish."""
    def submit(_):
        answer = requests.post(url + "/v1/jobs", json=job, timeout=30)
        if answer.status_code != 202:
            raise RuntimeError(f"submit refused: {answer.status_code} {answer.text}")
        return answer.json()["id"]

    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(submit, range(count)))
    finished, servers = {}, {}
    while len(finished) < count:
        for job_id in ids:
            if job_id in finished:
                continue
            view = requests.get(f"{url}/v1/jobs/{job_id}", timeout=30).json()
            if view["state"] in ("succeeded", "failed", "cancelled"):
                finished[job_id] = view["state"]
                servers[job_id[:8]] = servers.get(job_id[:8], 0) + 1
        time.sleep(0.2)
    seconds = time.monotonic() - started
    return {"jobs": count, "seconds": round(seconds, 2), "jobs_per_minute": round(60 * count / seconds, 2),
            "succeeded": sum(s == "succeeded" for s in finished.values()), "jobs_per_server": sorted(servers.values())}


def bench_fake(args) -> list[dict]:
    rows = []
    for n in args.servers:
        with tempfile.TemporaryDirectory() as folder:
            stack = Stack(Path(folder), [{"MODEL_SERVER_PIPELINE": "fake", "FAKE_STEP_SECONDS": args.step_seconds}] * n)
            try:
                stack.wait_ready(n, 60)
                job = {"prompt": "a lighthouse", "steps": args.steps, "width": 64, "height": 64}
                rows.append({"servers": n, **run_jobs(stack.url, args.jobs_per_server * n, job)})
            finally:
                stack.stop()
    one = rows[0]["jobs_per_minute"] / rows[0]["servers"]
    for row in rows:
        row["share_of_linear"] = round(row["jobs_per_minute"] / (one * row["servers"]), 3)
    return rows


def bench_sd14(args) -> list[dict]:
    from bench.sd14_model import DEFAULT_DIR, build

    model = build(DEFAULT_DIR)
    rows = []
    for layout in args.layouts:
        count, threads = (int(x) for x in layout.split("x"))
        with tempfile.TemporaryDirectory() as folder:
            env = {"SD_MODEL": str(model), "SD_THREADS": threads, "MODEL_SERVER_PIPELINE": "diffusers"}
            stack = Stack(Path(folder), [env] * count)
            try:
                loading = time.monotonic()
                stack.wait_ready(count, 1800)
                load_seconds = time.monotonic() - loading
                job = {"prompt": "a lighthouse", "steps": args.steps, "width": 512, "height": 512}
                result = run_jobs(stack.url, args.images, job)
                rss, peak = stack.peak_rss_bytes()
                rows.append({"layout": layout, "servers": count, "threads_each": threads, **result,
                             "images_per_hour": round(result["jobs_per_minute"] * 60, 1),
                             "rss_gib": round(rss / 2**30, 2), "peak_rss_gib": round(peak / 2**30, 2),
                             "ready_seconds": round(load_seconds, 1)})
            finally:
                stack.stop()
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", choices=("fake", "sd14"), default="fake")
    parser.add_argument("--servers", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 3])
    parser.add_argument("--jobs-per-server", type=int, default=12)
    parser.add_argument("--steps", type=int, default=None, help="steps per job (fake: 20; sd14: 8)")
    parser.add_argument("--step-seconds", type=float, default=0.05, help="the fake pipeline's step time")
    parser.add_argument("--layouts", type=lambda s: s.split(","), default=["1x2", "2x1"],
                        help="sd14: SERVERSxTHREADS each")
    parser.add_argument("--images", type=int, default=4, help="sd14: images per layout")
    parser.add_argument("--name", default=None)
    args = parser.parse_args(argv)
    args.steps = args.steps or (20 if args.pipeline == "fake" else 8)
    rows = bench_fake(args) if args.pipeline == "fake" else bench_sd14(args)
    from bench.run import machine

    result = {"pipeline": args.pipeline, "steps": args.steps, "machine": machine(), "rows": rows,
              "command": "python -m bench.fleet " + " ".join(sys.argv[1:] if argv is None else argv)}
    name = args.name or f"fleet-{args.pipeline}"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2))
    keys = list(rows[0])
    table = ["| " + " | ".join(keys) + " |", "|" + " --- |" * len(keys)]
    table += ["| " + " | ".join(str(row[k]) for k in keys) + " |" for row in rows]
    (RESULTS / f"{name}.md").write_text(f"`{result['command']}` on {result['machine']['cpu']}\n\n" + "\n".join(table)
                                        + "\n")
    print("\n".join(table))


if __name__ == "__main__":
    main()
