"""Proof under a real memory limit: the model server in a memory cgroup of its own (as ``docker run --memory``
puts it), its budget read from that limit, and a mixed run of jobs (sizes up to the largest allowed, n=4,
image-to-image, the hires fix, an upscale, a switch to an SDXL model and back): no process is OOM-killed, every
job ends succeeded or refused at submit with the budget's clear error, and the server is the same process at
the end."""

from __future__ import annotations

import base64
import io
import time

import pytest
import requests
from PIL import Image

from tests.helpers import free_port, start_gateway, start_model_server, wait_ready
from tests.helpers.cgroups import memory_cgroup

pytestmark = pytest.mark.slow
GIB = 2**30
MIB = 2**20


def _image(side: int) -> str:
    buffer = io.BytesIO()
    Image.effect_noise((side, side), 64).convert("RGB").save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _run(url: str, body: dict) -> tuple[str, dict]:
    """("succeeded", job) or ("refused", error body) or another end, for the caller to judge."""
    response = requests.post(url + "/v1/jobs", json={"steps": 2, **body}, timeout=30)
    if response.status_code != 202:
        return f"http {response.status_code}", response.json()
    job_id = response.json()["id"]
    for _ in range(2400):
        job = requests.get(f"{url}/v1/jobs/{job_id}", timeout=10).json()
        if job["state"] in ("succeeded", "failed", "cancelled"):
            return job["state"], job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not end: {job}")


def test_under_a_memory_limit_no_job_is_oom_killed_and_each_ends_done_or_refused_by_the_budget(
        log_dir, tiny_model_dir, tmp_path):
    group = memory_cgroup(3 * GIB)  # room to load; lowered once the server's own size is known
    model_port, http_port = free_port(), free_port()
    server = start_model_server(log_dir, model_port, wrap=group.join_command, SD_MODEL=str(tiny_model_dir),
                                MODEL_SERVER_PIPELINE="diffusers", SD_MODELS="tiny-sdxl",
                                SD_CACHE_DIR=tmp_path / "cache", MODEL_SERVER_QUEUE_SIZE=16)
    gateway = start_gateway(log_dir, http_port, model_port, MODEL_SERVER_TIMEOUT=30)
    url = f"http://127.0.0.1:{http_port}"
    try:
        wait_ready(url, server, timeout=180)
        pid = requests.get(url + "/health", timeout=10).json()["servers"][0]["server_id"]
        # Each model's one-time conversions (bf16 copy, OpenVINO IR: a child process of their own) before the limit
        # is lowered, as `fetch --convert` makes them ahead: the budget prices jobs, not first conversions.
        for model in ("tiny-sdxl", ""):
            assert _run(url, {"prompt": "warm up", "width": 256, "height": 256, "model": model})[0] == "succeeded"
        memory = requests.get(url + "/health", timeout=10).json()["memory"]
        # The limit now: what the server holds plus about a 1024x1024 tiny job's rise, not a 1536x1536 one's.
        limit = memory["idle_bytes"] + 260 * MIB
        group.set_limit(limit)
        memory = requests.get(url + "/health", timeout=10).json()["memory"]
        assert memory["budget_bytes"] == int(limit * 0.9) and "cgroup memory limit" in memory["budget_source"]
        gauge = [line.split()[1] for line in requests.get(url + "/metrics", timeout=10).text.splitlines()
                 if line.startswith("sdcpu_memory_budget_bytes ")]
        assert [float(value) for value in gauge] == [int(limit * 0.9)]

        jobs = [{"prompt": "n4", "width": 512, "height": 512, "n": 4},
                {"prompt": "img2img", "width": 768, "height": 768, "init_image": _image(768), "strength": 0.5},
                {"prompt": "square", "width": 1024, "height": 1024},
                {"prompt": "largest", "width": 1536, "height": 1536, "n": 4},
                {"prompt": "hires", "width": 768, "height": 768, "hires": {"scale": 2.0, "strength": 0.5}},
                {"prompt": "upscale", "mode": "upscale", "init_image": _image(1024), "upscale": 1.5},
                {"prompt": "switch", "model": "tiny-sdxl", "width": 512, "height": 512},
                {"prompt": "sdxl large", "model": "tiny-sdxl", "width": 1536, "height": 1536},
                {"prompt": "back", "width": 512, "height": 512, "n": 2},
                {"prompt": "largest again", "width": 1536, "height": 1536}]
        ends = []
        for body in jobs:
            end, detail = _run(url, body)
            ends.append((body["prompt"], end, detail))
            if end == "http 422":  # refused at submit: the budget's error, saying what to lower
                assert detail["code"] == "over_memory_budget", detail
                assert "budget" in detail["error"] and detail["hint"].startswith(("To fit", "The model")), detail
            else:
                assert end == "succeeded", (body["prompt"], detail)
                # RSS also counts shared pages charged to the cgroup that touched them first: no bound here
                assert detail["memory"]["peak_rss_bytes"] > 0 and detail["memory"]["predicted_peak_bytes"] > 0
        summary = [(prompt, end) for prompt, end, _ in ends]
        assert group.oom_kills() == 0, summary
        assert server.alive() and requests.get(url + "/health", timeout=10).json()["servers"][0]["server_id"] == pid
        refused = [prompt for prompt, end, _ in ends if end == "http 422"]
        assert refused and len(jobs) - len(refused) >= 4, summary  # the limit bites, and most of the run still works
        assert ("n4", "succeeded") in summary and ("switch", "succeeded") in summary, summary
    finally:
        gateway.stop()
        server.stop()
        group.remove()
    assert "Traceback" not in server.log()
