"""/metrics: request counters and the model server's figures, in Prometheus text format."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families


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
