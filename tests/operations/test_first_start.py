"""The first start, as a new user meets it: the model comes from the hub (a stand-in on loopback
that the real hub client downloads from, tests/helpers/hub_server.py), slowly enough to watch.

Real processes: ``python -m model_server`` (the diffusers pipeline, a tiny model served as
``sd-cpu/tiny-sd``) and the gunicorn gateway. /health shows the phase with bytes, rate and time
left; a download killed half-way continues on the next start; a hub that goes away, a full disk
and an offline start each end in a failure that says what is missing and what to do; and
``python -m model_server fetch`` fills the cache ahead of time so an offline start works.
"""

from __future__ import annotations

import base64
import io
import re
import signal
import subprocess
import time

import pytest
import requests
from PIL import Image

from model_server.engine.tiny_model import write_tiny_extras, write_tiny_inpaint_model, write_tiny_model
from tests.helpers import PYTHON, ROOT, base_env, free_port, wait_ready, wait_until
from tests.helpers.hub_server import REPO, FirstStart, HubServer

# The weights diffusers loads, all but a few hundred bytes of the download: its bytes_total.
WEIGHTS = ("unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
           "text_encoder/model.safetensors")


# A model published as OpenVINO IR only, as the OpenVINO organisation's int8 ones (engine/openvino_ir_model).
IR_REPO = "OpenVINO/tiny-sd-int8-ov"


@pytest.fixture(scope="module")
def repos(tiny_model_dir, tiny_ir_model_dir, tmp_path_factory):
    extras = tmp_path_factory.mktemp("extras")
    lora, taesd = write_tiny_extras(extras)
    return {REPO: tiny_model_dir, IR_REPO: tiny_ir_model_dir, "sd-cpu/tiny-lcm-lora": lora, "sd-cpu/tiny-taesd": taesd,
            "sd-cpu/tiny-inpaint": write_tiny_inpaint_model(extras / "inpaint"),
            "sd-cpu/tiny-turbo": write_tiny_model(extras / "turbo", turbo=True)}


@pytest.fixture
def hub(repos):
    server = HubServer(repos, rate=200_000).start()  # about 7 s for the tiny model's 1.5 MB
    yield server
    server.stop()


@pytest.fixture(scope="module")
def sd_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("sd-cache")  # the bf16 copy, made once for the module


@pytest.fixture
def first_start(log_dir, hub, tmp_path, sd_cache):
    started = []

    def start(hub_url: str | None = None, **env) -> FirstStart:
        started.append(FirstStart(log_dir, hub_url or hub.url, tmp_path / "hf-home", sd_cache, **env))
        return started[-1]

    yield start
    for service in started:
        service.stop()
        assert "Traceback" not in service.gateway.log()


def fetch_command(hub_url: str, hf_home, **env) -> subprocess.CompletedProcess:
    env = base_env(**{"HF_ENDPOINT": hub_url, "HF_HOME": hf_home, "HF_HUB_OFFLINE": "0", "SD_MODEL": REPO,
                      "SD_LCM_LORA": "none", "SD_TINY_VAE": "none", **env})
    return subprocess.run([PYTHON, "-m", "model_server", "fetch"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


def pixels(response: requests.Response) -> bytes:
    return Image.open(io.BytesIO(base64.b64decode(response.json()["data"][0]["b64_json"]))).tobytes()


def total_weights(hub: HubServer) -> int:
    return sum(hub.repos[REPO].files[name].stat().st_size for name in WEIGHTS)


def test_health_and_the_log_follow_the_download_then_the_model_works(first_start, hub):
    service = first_start()
    seen = [service.downloaded(1)]
    while (load := service.load()) and load["phase"] == "downloading":
        seen.append(load)
    ready = requests.get(service.url + "/health/ready", timeout=5)
    wait_ready(service.url, service.model, timeout=90)

    assert len(seen) > 5, "the download was watched a few times"
    total = seen[0]["bytes_total"]
    assert total >= total_weights(hub) and all(s["bytes_total"] == total for s in seen)
    done = [s["bytes_done"] for s in seen]
    assert done == sorted(done) and 0 < done[0] < total, "bytes only go up, from the start"
    middle = [s for s in seen if 0.2 < s["percent"] / 100 < 0.8]
    assert middle and all(s["rate_bytes_per_second"] > 30_000 and 0 < s["eta_seconds"] < 60 for s in middle)
    assert REPO in seen[0]["detail"]
    health = service.health()
    assert health["status"] == "ok" and health["load"]["phase"] == "done"
    assert {"downloading", "loading"} <= set(health["load"]["finished"])
    assert ready.status_code in (200, 503)  # the 503 during the load carries the phase (next test)

    image = requests.post(service.url + "/v1/images/generations", json={"prompt": "a cat", "size": "64x64"},
                          timeout=60)
    assert image.status_code == 200, image.text
    log = service.model.log()
    lines = [line for line in log.splitlines() if re.search(r"downloading: [\d.]+ [KM]?B of", line)]
    seconds = health["load"]["finished"]["downloading"]
    assert 1 <= len(lines) <= seconds / 5 + 2, "a line every few seconds, not a redrawn bar"
    assert "it/s]" not in log and "\r" not in log, "no terminal progress bars in the log"


def test_readiness_503_says_what_the_load_is_doing(first_start):
    service = first_start()
    service.downloaded(100_000)
    response = requests.get(service.url + "/health/ready", timeout=5)
    body = response.json()
    assert response.status_code == 503 and response.headers["Retry-After"]
    assert body["model_state"] == "loading" and body["load"]["phase"] == "downloading"
    assert 0 < body["load"]["bytes_done"] < body["load"]["bytes_total"]
    refused = requests.post(service.url + "/v1/jobs", json={"prompt": "a cat"}, timeout=10)
    assert refused.status_code == 503 and "downloading" in refused.json()["error"]


def test_a_download_killed_half_way_continues_on_the_next_start(first_start, hub, tmp_path):
    service = first_start()
    service.downloaded(total_weights(hub) // 2)
    service.model.signal(signal.SIGKILL)
    service.model.popen.wait(10)
    partials = list((tmp_path / "hf-home" / "hub").rglob("*.partial"))
    assert partials and all(p.stat().st_size > 0 for p in partials), "the cut-off file is kept"

    service.restart_model()
    wait_ready(service.url, service.model, timeout=90)
    resumed = [(path, start) for path, start in hub.ranges if start > 0]
    assert resumed, f"the next start asked for the rest only: {hub.ranges}"
    assert "resuming" in service.model.log()
    assert not list((tmp_path / "hf-home" / "hub").rglob("*.partial"))


def test_a_hub_that_goes_away_ends_in_a_failure_that_says_what_is_missing(first_start, hub):
    service = first_start()
    service.downloaded(200_000)
    port = hub.port
    hub.stop()
    health = service.failed()
    error = health["error"]
    assert "fetched and kept" in error["error"] and "still missing" in error["error"]
    assert "unet/diffusion_pytorch_model.safetensors" in error["error"]
    assert "network" in error["hint"] and "Restart" in error["hint"] and "fetch" in error["hint"]
    assert health["load"]["phase"] == "downloading" and health["load"]["bytes_done"] >= 200_000
    ready = requests.get(service.url + "/health/ready", timeout=5).json()
    assert ready["load"]["phase"] == "downloading" and ready["error"] == error["error"]
    progress_lines = lambda: len(re.findall(r"downloading: [\d.]+ [KM]?B of", service.model.log()))  # noqa: E731
    before = progress_lines()
    time.sleep(6)
    assert progress_lines() == before, "a failed download stops logging its progress"

    hub.start(port)  # the network is back: a restart finishes the job
    service.restart_model()
    wait_ready(service.url, service.model, timeout=90)


def test_not_enough_disk_space_is_refused_before_any_weight_is_fetched(first_start, hub):
    service = first_start(SD_DOWNLOAD_FREE_MARGIN_MB=10**9)  # a petabyte must stay free: no disk has it
    error = service.failed()["error"]
    assert "not enough disk space" in error["error"] and "SD_DOWNLOAD_FREE_MARGIN_MB" in error["error"]
    assert "HF_HOME" in error["hint"]
    assert not [path for path, _ in hub.ranges if path.endswith(".safetensors")]


def test_offline_without_the_model_says_how_to_get_it_and_fetch_fills_the_cache(first_start, hub, tmp_path):
    service = first_start(HF_HUB_OFFLINE="1")
    error = service.failed()["error"]
    assert "HF_HUB_OFFLINE" in error["error"] and "fetch" in error["hint"]
    service.stop()

    extras = {"SD_LCM_LORA": "sd-cpu/tiny-lcm-lora", "SD_TINY_VAE": "sd-cpu/tiny-taesd",
              "SD_INPAINT_MODEL": "sd-cpu/tiny-inpaint", "SD_MODELS": "sd-cpu/tiny-turbo"}
    fetched = fetch_command(hub.url, tmp_path / "hf-home", **extras)
    assert fetched.returncode == 0, fetched.stderr
    assert "everything the configuration needs is in the cache" in fetched.stderr
    asked = {path for path, _ in hub.ranges}
    assert set(WEIGHTS) | {"pytorch_lora_weights.safetensors", "unet/diffusion_pytorch_model.safetensors"} <= asked
    assert "tiny_model.json" not in asked, "only the files diffusers loads"

    offline = first_start(HF_HUB_OFFLINE="1", **extras)
    wait_ready(offline.url, offline.model, timeout=90)
    fast = requests.post(offline.url + "/generate", json={"prompt": "a cat", "preset": "fast", "width": 64,
                                                           "height": 64}, timeout=60)
    assert fast.status_code == 200, fast.text  # the fetched LCM-LoRA and TAESD, offline
    optimizations = offline.health()["optimizations"]
    assert optimizations["lcm_lora"] == "sd-cpu/tiny-lcm-lora" and optimizations["tiny_vae"] == "sd-cpu/tiny-taesd"
    turbo = requests.post(offline.url + "/v1/jobs", json={"prompt": "a cat", "model": "sd-cpu/tiny-turbo",
                                                           "width": 64, "height": 64}, timeout=60).json()

    def finished():
        job = requests.get(f"{offline.url}/v1/jobs/{turbo['id']}", timeout=5).json()
        return job if job["state"] in ("succeeded", "failed") else None

    done = wait_until(finished, 90, 0.2, "the turbo job")
    assert done["state"] == "succeeded" and done["model_switch"]["to_model"] == "sd-cpu/tiny-turbo", done  # fetched too


def test_a_model_published_as_openvino_ir_downloads_only_its_irs_and_starts_offline_after(first_start, hub):
    service = first_start(SD_MODEL=IR_REPO)
    wait_ready(service.url, service.model, timeout=90)
    asked = {path for path, _ in hub.ranges}
    parts = ("unet", "text_encoder", "vae_decoder", "vae_encoder")
    assert {f"{part}/openvino_model.bin" for part in parts} <= asked
    assert {"tokenizer/tokenizer.json", "scheduler/scheduler_config.json"} <= asked
    assert not [path for path in asked if path.endswith(".safetensors")]
    assert service.health()["optimizations"]["weights"] == "OpenVINO IR (no torch weights)"
    body = {"prompt": "a cat", "size": "64x64", "seed": 5}
    image = requests.post(service.url + "/v1/images/generations", json=body, timeout=60)
    assert image.status_code == 200, image.text
    service.stop()
    offline = first_start(SD_MODEL=IR_REPO, HF_HUB_OFFLINE="1")
    wait_ready(offline.url, offline.model, timeout=90)
    again = requests.post(offline.url + "/v1/images/generations", json=body, timeout=60)
    assert again.status_code == 200, again.text
    assert pixels(again) == pixels(image)  # the same model, from the cache


def test_fetch_exits_non_zero_with_the_reason_and_the_fix(repos, tmp_path):
    unreachable = fetch_command(f"http://127.0.0.1:{free_port()}", tmp_path / "hf-a")
    assert unreachable.returncode == 1
    assert "could not reach the hub" in unreachable.stderr and "HTTPS_PROXY" in unreachable.stderr

    gated = HubServer({REPO: repos[REPO]}, token="hf_secret").start()
    try:
        refused = fetch_command(gated.url, tmp_path / "hf-b")
        assert refused.returncode == 1 and "gated or private" in refused.stderr and "HF_TOKEN" in refused.stderr
        allowed = fetch_command(gated.url, tmp_path / "hf-c", HF_TOKEN="hf_secret")
        assert allowed.returncode == 0, allowed.stderr
        assert "hf_secret" not in allowed.stderr + refused.stderr
    finally:
        gated.stop()


def test_a_partial_file_with_wrong_bytes_is_caught_by_its_hash_and_fetched_again(repos, tmp_path):
    unet = "unet/diffusion_pytorch_model.safetensors"
    for ranges in (True, False):  # continued with a Range, or sent whole by a server that ignores it
        hub = HubServer({REPO: repos[REPO]}, ranges=ranges).start()
        hf_home = tmp_path / f"hf-{ranges}"
        blobs = hf_home / "hub" / "models--sd-cpu--tiny-sd" / "blobs"
        blobs.mkdir(parents=True)
        (blobs / f"{hub.repos[REPO].sha256[unet]}.partial").write_bytes(b"\0" * 1000)  # not the file's first bytes
        try:
            first = fetch_command(hub.url, hf_home)
            if ranges:
                assert first.returncode == 1 and "did not match its sha256" in first.stderr
                assert (unet, 1000) in hub.ranges
                first = fetch_command(hub.url, hf_home)  # the bad part was deleted: fetched whole
            assert first.returncode == 0, first.stderr
            cached = next((hf_home / "hub").rglob(unet)).read_bytes()
            assert cached == hub.repos[REPO].files[unet].read_bytes()
        finally:
            hub.stop()
