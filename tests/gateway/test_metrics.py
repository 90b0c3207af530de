"""/metrics: request counters and the model server's figures, in Prometheus text format."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from protocol.messages import StorageStatus, LoadStatus, ModelState


def samples(text: str) -> dict:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_count_requests_and_report_the_model_server(client, fake):
    client.post("/v1/jobs", json={"prompt": "a cat"})
    client.post("/v1/jobs", json={"prompt": ""})
    response = client.get("/metrics")
    assert response.status_code == 200 and response.mimetype == "text/plain"
    got = samples(response.get_data(as_text=True))
    assert got[("sdcpu_http_requests_total", (("method", "POST"), ("route", "/v1/jobs"), ("status", "202")))] >= 1
    assert got[("sdcpu_http_requests_total", (("method", "POST"), ("route", "/v1/jobs"), ("status", "400")))] >= 1
    assert got[("sdcpu_model_server_up", ())] == 1 and got[("sdcpu_model_ready", ())] == 1
    assert ("sdcpu_jobs_total", (("outcome", "succeeded"),)) in got
    assert ("sdcpu_queue_depth", ()) in got


def test_metrics_say_when_the_model_server_is_down(client, fake):
    fake.will_be_unreachable()
    got = samples(client.get("/metrics").get_data(as_text=True))
    assert got[("sdcpu_model_server_up", ())] == 0


def test_a_first_start_shows_its_phase_and_download_in_metrics_and_health(client, fake):
    fake.model_state = ModelState.LOADING
    fake.load = LoadStatus(phase="downloading", detail="org/model: 9 files", seconds=12.5, bytes_done=1_000_000,
                           bytes_total=4_000_000, rate_bytes_per_second=80_000.0, eta_seconds=37.5)
    got = samples(client.get("/metrics").get_data(as_text=True))
    assert got[("sdcpu_model_load_phase", (("phase", "downloading"),))] == 1
    assert got[("sdcpu_model_download_bytes", ())] == 1_000_000
    assert got[("sdcpu_model_download_total_bytes", ())] == 4_000_000
    assert got[("sdcpu_model_ready", ())] == 0
    health = client.get("/health").get_json()
    assert health["status"] == "loading" and health["load"]["percent"] == 25.0
    assert health["load"]["eta_seconds"] == 37.5 and health["load"]["detail"] == "org/model: 9 files"
    ready = client.get("/health/ready")
    assert ready.status_code == 503 and ready.get_json()["load"]["phase"] == "downloading"
    fake.model_state, fake.load = ModelState.READY, LoadStatus(phase="done", finished={"downloading": 50.0})
    got = samples(client.get("/metrics").get_data(as_text=True))
    assert not [name for name, _ in got if name.startswith(("sdcpu_model_load_phase", "sdcpu_model_download"))]


def test_a_failing_outputs_disk_turns_health_degraded_and_counts_in_metrics(client, fake):
    fake.storage = StorageStatus(ok=False, reason="could not write job 1's images to OUTPUTS_DIR: No space left",
                                 errors=3, free_bytes=0, min_free_bytes=100 * 2**20)
    fake.stats = {"storage_errors": 3.0}
    health = client.get("/health")
    body = health.get_json()
    assert health.status_code == 200 and body["status"] == "degraded"
    assert "No space left" in body["degraded"][0]["reason"] and "OUTPUTS_DIR" in body["degraded"][0]["hint"]
    assert body["servers"][0]["storage"]["errors"] == 3
    assert client.get("/health/ready").status_code == 200  # jobs still run: images are served from memory
    got = samples(client.get("/metrics").get_data(as_text=True))
    assert got[("sdcpu_storage_errors_total", ())] == 3
    assert got[("sdcpu_server_storage_ok", (("server", "model.sock"),))] == 0
    fake.storage = StorageStatus(ok=True, free_bytes=10**9)
    assert client.get("/health").get_json()["status"] == "ok"
