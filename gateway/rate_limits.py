"""Rate limits (Flask-Limiter), per API key or client address, in two route classes.

``generate`` covers the routes that start work (views marked ``policy.starts_work``: /generate,
POST /v1/jobs, OpenAI and A1111 generation), charged only once the request has been validated:
a malformed request gets its 400 and spends none of it (validation costs no model time).
``read`` covers every other route but those marked ``policy.unlimited`` or ``policy.probe``
(health, metrics, the page and its files), so probes keep working whatever the store does.
Counters live in RATE_LIMIT_STORAGE: Redis (``redis://host:6379/0``) shares them across gunicorn
workers and gateway replicas; the default ``memory://`` is per process (the gateway then runs one
worker). If the store is down,
RATE_LIMIT_ON_STORE_ERROR decides: ``memory`` (default) falls back to per-process limits,
``open`` lets requests through, ``closed`` answers 503. Never a 500.
"""

from __future__ import annotations

import logging
import math
import time

import functools

from flask import Flask, g
from flask_limiter import HeaderNames, Limiter
from flask_limiter.errors import RateLimitExceeded

from gateway.auth import client_id
from gateway.errors import ApiError, render
from gateway.policy import is_unlimited, parse_first, work_predicate
from gateway.settings import GatewaySettings

log = logging.getLogger(__name__)


class _OneLine(logging.Filter):
    """A Redis outage would log a traceback on every request; one line says it all."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            record.msg = f"{record.getMessage()}: {type(exc).__name__}: {exc}"
            record.args, record.exc_info, record.exc_text = None, None, None
        return True


def install(app: Flask, settings: GatewaySettings) -> Limiter | None:
    if not settings.rate_limit_enabled:
        return None
    logging.getLogger("flask-limiter").addFilter(_OneLine())
    mode = settings.rate_limit_on_store_error
    limiter = Limiter(client_id, app=app, storage_uri=settings.rate_limit_storage, strategy="moving-window",
                      headers_enabled=True,
                      # Our handlers set Retry-After themselves (also for queue_full 429s, which
                      # Flask-Limiter would otherwise overwrite with its own window).
                      header_name_mapping={HeaderNames.RETRY_AFTER: "X-RateLimit-Retry-After"},
                      swallow_errors=mode in ("open", "memory"),
                      in_memory_fallback_enabled=mode == "memory",
                      storage_options={"socket_connect_timeout": 1, "socket_timeout": 1})
    generate = limiter.shared_limit(settings.rate_limit_generate, scope="generate")
    read = limiter.shared_limit(settings.rate_limit_read, scope="read")
    for endpoint, view in list(app.view_functions.items()):
        if is_unlimited(app, endpoint):  # probes and the page: they must work whatever the store does
            continue
        parse, work_when = parse_first(view), work_predicate(view)
        if work_when is not None:  # one route, both kinds (/mcp: a tool call that starts a job, or anything else)
            app.view_functions[endpoint] = limiter.shared_limit(
                settings.rate_limit_generate, scope="generate", exempt_when=lambda w=work_when: not w())(
                limiter.shared_limit(settings.rate_limit_read, scope="read", exempt_when=work_when)(view))
            continue
        app.view_functions[endpoint] = read(view) if parse is None else _validated_first(parse, generate(view))

    @app.errorhandler(RateLimitExceeded)
    def _limited(exc: RateLimitExceeded):
        current = limiter.current_limit
        wait = max(1, math.ceil(current.reset_at - time.time())) if current else 60
        return render(ApiError(429, "rate_limited", f"too many requests: the limit is {exc.limit.limit}",
                               f"Slow down; retry in {wait} s.", retry_after=wait))

    if mode == "closed":
        @app.errorhandler(ConnectionError)
        def _store_down(exc):
            return _store_error(exc)

        try:
            import redis

            app.register_error_handler(redis.exceptions.RedisError, _store_error)
        except ImportError:
            pass
    return limiter


def _validated_first(parse, limited_view):
    """Validate (a 400 costs no budget), then charge the generation limit, then run the view."""
    @functools.wraps(limited_view)
    def run(**kwargs):
        g.parsed = parse()
        return limited_view(**kwargs)

    return run


def _store_error(exc: Exception):
    log.warning("rate limit store unavailable (%s); refusing the request (RATE_LIMIT_ON_STORE_ERROR=closed)",
                type(exc).__name__)
    return render(ApiError(503, "rate_limit_store_unavailable", "the rate limit store cannot be reached",
                           "Retry shortly; the operator should check the Redis service.", retry_after=5))
