"""``GET /metrics`` in Prometheus format, with the official client.

Under gunicorn the request metrics are multiprocess-safe (PROMETHEUS_MULTIPROC_DIR, set by
gunicorn.conf.py). The model servers' own figures (queue, jobs by outcome, generation and step
seconds, memory, time to ready) are read from their Pongs at scrape time, so they are exact and
no state lives in the gateway.
"""

from __future__ import annotations

import os
import time

from flask import Blueprint, Flask, Response, g, request
from prometheus_client import (CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Histogram,
                               generate_latest, multiprocess)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from gateway.policy import probe
from gateway.services import services

bp = Blueprint("metrics", __name__)
REQUESTS = Counter("sdcpu_http_requests_total", "HTTP requests answered", ["route", "method", "status"])
LATENCY = Histogram("sdcpu_http_request_duration_seconds", "Time to answer an HTTP request (to first byte)",
                    ["route"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800))
_OUTCOMES = ("succeeded", "failed", "cancelled", "rejected")  # the model server's jobs_<outcome> counters


def install(app: Flask) -> None:
    @app.before_request
    def _start():
        g.started = time.perf_counter()

    @app.after_request
    def _count(response):
        route = request.url_rule.rule if request.url_rule else "unmatched"
        REQUESTS.labels(route, request.method, str(response.status_code)).inc()
        LATENCY.labels(route).observe(time.perf_counter() - g.get("started", time.perf_counter()))
        return response


class ModelServerCollector:
    """Model-server gauges and counters, read from one ping of every server at scrape time: totals
    over the servers (the queue depth an autoscaler reads), the same per server (label ``server``),
    and the memory and load figures of the server that answers for the model (``Fleet.ping``'s)."""

    def __init__(self, client):
        self.client = client

    def collect(self):
        views = self.client.servers(timeout=1.0)
        pongs = [v.pong for v in views if v.alive and v.pong is not None]
        up = GaugeMetricFamily("sdcpu_model_server_up", "1 if a model server answered the scrape's ping")
        up.add_metric([], float(bool(pongs)))
        yield up
        yield from _per_server(views)
        if not pongs:
            return
        pong = next((p for p in pongs if p.model_state.value == "ready"), pongs[0])
        gauges = {
            "sdcpu_model_ready": ("1 if a model server has its model loaded", float(pong.model_state.value == "ready")),
            "sdcpu_model_servers_ready": ("Model servers with their model loaded",
                                          sum(p.model_state.value == "ready" for p in pongs)),
            "sdcpu_queue_depth": ("Jobs waiting, over every model server", sum(p.queue_depth for p in pongs)),
            "sdcpu_queue_capacity": ("Queue bound, over every model server", sum(p.queue_capacity for p in pongs)),
            "sdcpu_job_running": ("Jobs running, over every model server",
                                  sum(p.running_job is not None for p in pongs)),
            "sdcpu_model_server_rss_bytes": ("Model server resident memory", pong.rss_bytes),
            "sdcpu_model_server_peak_rss_bytes": ("Model server peak resident memory", pong.peak_rss_bytes),
            "sdcpu_model_load_seconds": ("Time from start to model ready", pong.load_seconds or 0.0),
            "sdcpu_model_server_uptime_seconds": ("Model server uptime", pong.uptime_seconds),
        }
        if pong.available_bytes is not None:
            gauges["sdcpu_memory_available_bytes"] = ("Memory the model server's machine/container has left",
                                                      pong.available_bytes)
        if pong.memory_budget is not None and pong.memory_budget.budget_bytes:
            gauges["sdcpu_memory_budget_bytes"] = ("The memory budget the model server keeps (MEMORY_BUDGET): jobs "
                                                   "predicted over it are refused", pong.memory_budget.budget_bytes)
        load = pong.load
        if load is not None and load.phase != "done":  # a first start: what an operator's dashboard watches
            gauges["sdcpu_model_load_phase_seconds"] = ("Seconds in the current load phase", load.seconds)
            if load.bytes_total:
                gauges["sdcpu_model_download_bytes"] = ("Bytes of the model downloaded so far", load.bytes_done or 0)
                gauges["sdcpu_model_download_total_bytes"] = ("Bytes of the model to download", load.bytes_total)
        for name, (doc, value) in gauges.items():
            family = GaugeMetricFamily(name, doc)
            family.add_metric([], value)
            yield family
        if load is not None and load.phase != "done":
            phase = GaugeMetricFamily("sdcpu_model_load_phase", "1 for the phase the model's load is in",
                                      labels=["phase"])
            phase.add_metric([load.phase], 1)
            yield phase
        jobs = CounterMetricFamily("sdcpu_jobs", "Jobs by outcome since the model servers started",
                                   labels=["outcome"])
        for outcome in _OUTCOMES:
            jobs.add_metric([outcome], sum(p.stats.get(f"jobs_{outcome}", 0.0) for p in pongs))
        yield jobs
        for name, key, doc in (("sdcpu_generation_seconds", "generation_seconds", "Seconds spent running jobs"),
                               ("sdcpu_steps", "steps", "Denoising steps run"),
                               ("sdcpu_step_seconds", "step_seconds", "Seconds spent in denoising steps "
                                                                      "(divide by sdcpu_steps for s/step)"),
                               ("sdcpu_images", "images", "Images produced"),
                               ("sdcpu_model_switches", "model_switches", "Jobs that loaded another model first"),
                               ("sdcpu_model_switch_seconds", "model_switch_seconds",
                                "Seconds spent switching models"),
                               ("sdcpu_storage_errors", "storage_errors",
                                "Writes to OUTPUTS_DIR that failed (full, read-only or broken disk)"),
                               ("sdcpu_webhook_attempts", "webhook_attempts", "Webhook POSTs made (retries included)"),
                               ("sdcpu_webhook_attempts_failed", "webhook_attempts_failed",
                                "Webhook POSTs that failed (no 2xx, refused address, timeout)")):
            family = CounterMetricFamily(name, doc)
            family.add_metric([], sum(p.stats.get(key, 0.0) for p in pongs))
            yield family
        webhooks = CounterMetricFamily("sdcpu_webhooks", "Webhooks settled since the model servers started: "
                                       "delivered, or failed after every attempt", labels=["outcome"])
        for outcome in ("delivered", "failed"):
            webhooks.add_metric([outcome], sum(p.stats.get(f"webhooks_{outcome}", 0.0) for p in pongs))
        yield webhooks
        pending = GaugeMetricFamily("sdcpu_webhooks_pending", "Webhooks still to deliver (retries waiting included)")
        pending.add_metric([], sum(p.stats.get("webhooks_pending", 0.0) for p in pongs))
        yield pending


def _per_server(views):
    """One series per model server, labelled by its name (host:port or socket file)."""
    families = {
        "up": GaugeMetricFamily("sdcpu_server_up", "1 if this model server answered", labels=["server"]),
        "ready": GaugeMetricFamily("sdcpu_server_ready", "1 if this model server's model is loaded",
                                   labels=["server"]),
        "queue": GaugeMetricFamily("sdcpu_server_queue_depth", "Jobs waiting on this model server", labels=["server"]),
        "running": GaugeMetricFamily("sdcpu_server_job_running", "1 while this model server runs a job",
                                     labels=["server"]),
        "rss": GaugeMetricFamily("sdcpu_server_rss_bytes", "This model server's resident memory", labels=["server"]),
        "storage": GaugeMetricFamily("sdcpu_server_storage_ok", "1 while this model server's OUTPUTS_DIR takes its "
                                     "writes and has the free space MIN_FREE_DISK_MB asks", labels=["server"]),
        "free": GaugeMetricFamily("sdcpu_server_disk_free_bytes", "Free space on the disk of this model server's "
                                  "OUTPUTS_DIR", labels=["server"]),
    }
    for view in views:
        pong = view.pong if view.alive else None
        families["up"].add_metric([view.name], float(pong is not None))
        families["ready"].add_metric([view.name], float(pong is not None and pong.model_state.value == "ready"))
        if pong is not None:
            families["queue"].add_metric([view.name], pong.queue_depth)
            families["running"].add_metric([view.name], float(pong.running_job is not None))
            families["rss"].add_metric([view.name], pong.rss_bytes)
            if pong.storage is not None:
                families["storage"].add_metric([view.name], float(pong.storage.ok))
                if pong.storage.free_bytes is not None:
                    families["free"].add_metric([view.name], pong.storage.free_bytes)
    yield from families.values()


@bp.get("/metrics")
@probe
def metrics():
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        body = generate_latest(registry)
    else:
        body = generate_latest(REGISTRY)
    scrape = CollectorRegistry()
    scrape.register(ModelServerCollector(services().client))
    # content_type, not mimetype: CONTENT_TYPE_LATEST carries its charset, which mimetype would repeat.
    return Response(body + generate_latest(scrape), content_type=CONTENT_TYPE_LATEST)
