"""gunicorn settings for the gateway, from the environment (gateway.settings.ServingSettings).

gthread workers: each request gets a thread, so a minutes-long /generate or an SSE stream
never blocks /health in the same worker. The gateway does no heavy work (the model server
does), so a few processes with many threads go a long way.
"""

import os
import shutil
import tempfile

# Prometheus metrics from every worker are merged through files in this folder (prometheus_client's
# multiprocess mode). It must be set before prometheus_client is first imported (the mode is
# chosen at import), and exist, empty, before the workers start.
_OWN_METRICS_DIR = "PROMETHEUS_MULTIPROC_DIR" not in os.environ
if _OWN_METRICS_DIR:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="sd-cpu-metrics-")

# Imported here, in the master at start-up: importing it inside child_exit (a SIGCHLD handler)
# can re-enter a half-finished import and crash the arbiter on shutdown.
from prometheus_client import multiprocess  # noqa: E402

from gateway.settings import GatewaySettings, ServingSettings  # noqa: E402

_serving = ServingSettings.from_env()
wsgi_app = "gateway.wsgi:app"
bind = _serving.bind
# Rate-limit counters in memory:// are per process, so with the default store one worker keeps the
# documented limits exact (its threads share them); with a shared store (Redis) use more.
_SHARED_LIMITS = not GatewaySettings.from_env().rate_limit_storage.startswith("memory")
workers = _serving.workers or (2 if _SHARED_LIMITS else 1)
# gthread that reads each request whole before a thread takes it (gateway/worker.py): slow clients
# cannot pin threads.
worker_class = "gateway.worker.DeadlineThreadWorker"
threads = _serving.threads
# The worker heartbeat, not a request limit: gthread requests may run far longer.
timeout = _serving.worker_timeout
graceful_timeout = _serving.graceful_timeout
keepalive = 5  # docker/nginx.conf keeps its idle upstream connections for less (4 s)
accesslog = _serving.access_log
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(M)sms rid=%({x-request-id}o)s'


def on_starting(server):
    folder = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder, exist_ok=True)


def child_exit(server, worker):
    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    if _OWN_METRICS_DIR:  # a folder we made for this run: leave nothing behind in the temp dir
        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)
