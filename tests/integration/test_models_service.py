"""Models and LoRAs per request on the real service: the tiny model, an SD-Turbo-shaped one and a
single-file checkpoint behind one model server, LoRAs from LORA_DIR, two API keys queueing jobs
for different models."""

from __future__ import annotations

import io
import re
import time

import pytest
import requests
from PIL import Image

from tests.helpers import wait_until
from tests.integration.conftest import start_stack, stop_stack

pytestmark = pytest.mark.slow
KEYS = {"alice": "key-alice-0123456789", "bob": "key-bob-0123456789"}


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    from model_server.engine.tiny_model import build_tiny_pipeline, write_random_lora
    from bench.ldm_checkpoint import write_ldm_checkpoint

    root = tmp_path_factory.mktemp("models")
    write_ldm_checkpoint(build_tiny_pipeline(seed=7), root / "checkpoints" / "my-merge.safetensors")
    write_random_lora(root / "loras" / "ink.safetensors", build_tiny_pipeline(), seed=1)
    write_random_lora(root / "loras" / "pencil.safetensors", build_tiny_pipeline(), seed=2, kohya=False)
    return root


@pytest.fixture(scope="module")
def stack(log_dir, tiny_model_dir, models_dir):
    # torch runs the UNet: each model's one-time OpenVINO conversion would only slow the suite down here
    # (switching on OpenVINO is measured in bench/model_switch.py).
    stack = start_stack(log_dir, tiny_model_dir, gateway_env={"API_KEYS": ",".join(KEYS.values()),
                                                              "AUTH_PUBLIC_HEALTH": "true"},
                        SD_BACKEND="torch", SD_MODELS="tiny-turbo", SD_MODELS_DIR=models_dir / "checkpoints",
                        SD_SINGLE_FILE_CONFIG=tiny_model_dir, LORA_DIR=models_dir / "loras",
                        MAX_QUEUED_PER_CLIENT=6, MODEL_SERVER_QUEUE_SIZE=12,
                        MAX_RESIDENT_MODELS=2)  # three models round-robin through two places: every change loads
    yield stack
    stop_stack(stack)
    assert "Traceback" not in stack.gateway.log()


def call(stack, who: str, method: str, path: str, **kw) -> requests.Response:
    return requests.request(method, f"{stack.url}{path}", headers={"Authorization": f"Bearer {KEYS[who]}"},
                            timeout=60, **kw)


def wait_done(stack, who: str, job_id: str, timeout: float = 120) -> dict:
    def finished():
        job = call(stack, who, "GET", f"/v1/jobs/{job_id}").json()
        return job if job["state"] in ("succeeded", "failed", "cancelled") else None

    return wait_until(finished, timeout, 0.1, f"job {job_id} finished")


def test_the_models_and_loras_are_listed_on_every_api(stack, tiny_model_dir):
    models = {m["id"]: m for m in call(stack, "alice", "GET", "/v1/models").json()["data"]}
    default = tiny_model_dir.name  # a folder is named for itself (its path stays private)
    assert list(models) == [default, "tiny-turbo", "my-merge"]
    assert models[default]["default"] and models[default]["loaded"] and not models[default]["one_step"]
    assert models["tiny-turbo"]["one_step"] and "fast" in models["tiny-turbo"]["unavailable_presets"]
    assert "turbo" in models["my-merge"]["unavailable_presets"] and models["my-merge"]["kind"] == "single_file"
    assert models["my-merge"]["source"] == "my-merge.safetensors"  # never a local path
    assert call(stack, "alice", "GET", "/v1/models/tiny-turbo").json()["one_step"]
    assert call(stack, "alice", "GET", "/v1/models/nope").status_code == 404
    loras = call(stack, "alice", "GET", "/v1/loras").json()["loras"]
    assert [(lora["name"], lora["file"]) for lora in loras] == [("ink", "ink.safetensors"),
                                                               ("pencil", "pencil.safetensors")]
    titles = [m["title"] for m in call(stack, "alice", "GET", "/sdapi/v1/sd-models").json()]
    assert titles[1:] == ["tiny-turbo", "my-merge"]
    assert [lora["name"] for lora in call(stack, "alice", "GET", "/sdapi/v1/loras").json()] == ["ink", "pencil"]


def test_unknown_names_and_bad_weights_are_400s_that_list_the_known_ones(stack):
    for body, words in (({"model": "nope"}, ["unknown model 'nope'", "tiny-turbo", "my-merge"]),
                        ({"loras": [{"name": "nope"}]}, ["unknown LoRA 'nope'", "ink, pencil"]),
                        ({"loras": [{"name": "ink", "weight": 9}]}, ["loras"]),
                        ({"prompt": "a cat <lora:ink:heavy>"}, ["<lora:NAME:WEIGHT>"]),
                        ({"prompt": "a cat <lora:gone:1>"}, ["unknown LoRA 'gone'", "ink"]),
                        ({"preset": "turbo"}, ["not a one-step model"]),
                        ({"model": "tiny-turbo", "preset": "fast"}, ["use turbo"])):
        response = call(stack, "alice", "POST", "/v1/jobs", json={"prompt": "a cat", "steps": 2, **body})
        text = response.text
        assert response.status_code == 400 and all(word in text for word in words), (body, text)


def test_loras_from_the_prompt_and_the_field_are_applied_recorded_and_written_into_the_png(stack):
    job = call(stack, "alice", "POST", "/v1/jobs", json={
        "prompt": "a cat <lora:ink:0.7>", "steps": 2, "width": 64, "height": 64, "seed": 4,
        "loras": [{"name": "pencil", "weight": 0.5}]}).json()
    done = wait_done(stack, "alice", job["id"])
    assert done["state"] == "succeeded", done
    assert done["params"]["prompt"] == "a cat"
    assert done["params"]["loras"] == [{"name": "pencil", "weight": 0.5}, {"name": "ink", "weight": 0.7}]
    assert sorted(done["lora_hashes"]) == ["ink", "pencil"] and all(len(h) == 12 for h in done["lora_hashes"].values())
    png = Image.open(io.BytesIO(call(stack, "alice", "GET", f"/v1/jobs/{job['id']}/image").content))
    text = png.info["parameters"]
    assert text.startswith("a cat <lora:pencil:0.5> <lora:ink:0.7>")
    assert f'Lora hashes: "pencil: {done["lora_hashes"]["pencil"]}, ink: {done["lora_hashes"]["ink"]}"' in text
    plain = call(stack, "alice", "POST", "/generate", json={"prompt": "a cat", "steps": 2, "width": 64, "height": 64,
                                                            "seed": 4})
    again = call(stack, "alice", "POST", "/generate", json={"prompt": "a cat <lora:ink:0.7>", "steps": 2, "width": 64,
                                                            "height": 64, "seed": 4, "loras": [
                                                                {"name": "pencil", "weight": 0.5}]})
    assert plain.status_code == again.status_code == 200 and plain.content != again.content
    assert again.content == call(stack, "alice", "GET", f"/v1/jobs/{job['id']}/image").content


def test_two_clients_queueing_different_models_run_in_order_and_each_switch_is_reported(stack):
    """Alice and Bob queue jobs for three models at once: they run in the order sent (no client waits
    for others to avoid a switch), each job that loaded its model says so, and memory stays flat."""
    plan = [("alice", {}), ("bob", {"model": "tiny-turbo"}), ("alice", {"model": "my-merge"}),
            ("bob", {}), ("alice", {"model": "tiny-turbo"}), ("bob", {"model": "my-merge", "preset": "balanced"}),
            ("alice", {}), ("bob", {"model": "tiny-turbo", "steps": 2})]
    ids = []
    for who, body in plan:
        steps = {} if body.get("model") == "tiny-turbo" else {"steps": 3}  # turbo: its preset's one step
        response = call(stack, who, "POST", "/v1/jobs", json={"prompt": "a cat", "width": 64, "height": 64,
                                                              **steps, **body})
        assert response.status_code == 202, response.text
        ids.append((who, response.json()["id"]))
    jobs = [wait_done(stack, who, job_id) for who, job_id in ids]
    assert [j["state"] for j in jobs] == ["succeeded"] * len(plan), [j.get("error") for j in jobs]
    starts = [j["started_at"] for j in jobs]
    assert starts == sorted(starts)  # first come, first served, whatever the model
    turbo = [j for j in jobs if j["model"] == "tiny-turbo"]
    assert all(j["params"]["preset"] == "turbo" and j["params"]["guidance_scale"] == 0 for j in turbo)
    assert [j["params"]["steps"] for j in turbo] == [1, 1, 2]
    previous = call(stack, "alice", "GET", "/v1/models").json()["data"][0]["id"]
    switches = []
    for job in jobs:
        assert (job["model_switch"] is not None) == (job["model"] != previous), job
        if job["model_switch"]:
            assert job["model_switch"]["from_model"] == previous and job["model_switch"]["to_model"] == job["model"]
            switches.append(job["model_switch"])
        previous = job["model"]
    assert len(switches) >= 6
    # at most two models in memory: after six switches the server holds what it held after the second
    assert max(s["rss_bytes"] for s in switches) < switches[1]["rss_bytes"] + 300 * 2**20
    health = call(stack, "alice", "GET", "/health").json()
    assert health["loaded_model"] == health["servers"][0]["loaded_model"] == "tiny-turbo"
    metrics = call(stack, "alice", "GET", "/metrics").text
    counted = re.search(r"^sdcpu_model_switches_total (\S+)$", metrics, re.MULTILINE)
    assert counted and float(counted.group(1)) == len(switches)  # the earlier tests' jobs all ran the default


def test_a_model_still_in_memory_runs_without_a_reload_and_health_says_which_are_resident(stack, tiny_model_dir):
    resident = call(stack, "alice", "GET", "/health").json()["memory"]["resident_models"]
    assert len(resident) == 2 and all(size > 0 for size in resident.values()), resident
    for name in list(resident) * 2:  # alternating between the two in memory: no loads
        job = call(stack, "alice", "POST", "/v1/jobs", json={"prompt": "a cat", "model": name, "width": 64,
                                                             "height": 64, "steps": 1}).json()
        done = wait_done(stack, "alice", job["id"])
        assert done["state"] == "succeeded" and done["model"] == name and done["model_switch"] is None, done
        assert done["memory"]["basis"] and done["memory"]["peak_rss_bytes"] > 0
    assert call(stack, "alice", "GET", "/health").json()["memory"]["resident_models"].keys() == resident.keys()


def test_a_switch_shows_in_the_jobs_progress_while_it_loads(stack, tiny_model_dir):
    resident = call(stack, "bob", "GET", "/health").json()["memory"]["resident_models"]
    target = next(m["id"] for m in call(stack, "bob", "GET", "/v1/models").json()["data"] if m["id"] not in resident)
    job = call(stack, "bob", "POST", "/v1/jobs", json={"prompt": "a cat", "model": target, "steps": 2,
                                                       "width": 64, "height": 64}).json()
    seen = set()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        view = call(stack, "bob", "GET", f"/v1/jobs/{job['id']}").json()
        if view["progress"] and view["progress"].get("detail"):
            seen.add(view["progress"]["detail"])
        if view["state"] == "succeeded":
            break
        time.sleep(0.02)
    assert view["state"] == "succeeded" and view["model_switch"]["to_model"] == target
    # the detail is there while the model loads (a tiny model loads fast: it may be missed, not wrong)
    assert all(d.startswith(f"loading model {target}") for d in seen)
