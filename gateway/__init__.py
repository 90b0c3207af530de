"""The HTTP gateway: validates requests and forwards work to the model servers over ZeroMQ.

Holds no job state: the model servers own the truth about every job, and a job's id names its
server, so any gunicorn worker and thread of any replica can answer any request (a process keeps
only the submissions it may have to place again if their server dies: ``gateway/fleet``). Never
imports ``model_server`` nor torch.
"""

from __future__ import annotations

import logging
import math
import re
import uuid

from flask import Flask, g, request
from flask_cors import CORS
from werkzeug.middleware.proxy_fix import ProxyFix

from gateway import auth, policy
from gateway.errors import register_error_handlers
from gateway.fleet import Fleet, discovery
from gateway.services import Services
from gateway.settings import GatewaySettings

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
EXPOSED_HEADERS = ["X-Seed", "X-Job-Id", "X-Request-Id", "Retry-After", "Location"]


def create_app(settings: GatewaySettings | None = None, model_client=None) -> Flask:
    """Build the Flask app; tests pass their own settings and (fake) model client."""
    settings = settings or GatewaySettings.from_env()
    client = model_client or Fleet(discovery(settings.model_server), timeout=settings.model_server_timeout,
                                   curve=settings.curve, discovery_seconds=settings.discovery_seconds,
                                   lost_seconds=settings.model_server_lost_seconds)
    app = Flask(__name__, static_folder="static", static_url_path="/static")
    if settings.trusted_proxies:
        # Behind N reverse proxies (compose's nginx), the client is the address they forwarded:
        # rate limits and, without keys, job ownership follow the real client, not the proxy.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.trusted_proxies, x_proto=settings.trusted_proxies,
                                x_host=settings.trusted_proxies)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.sort_keys = False
    app.extensions["sd"] = Services(settings, client)
    if settings.cors_origins:
        CORS(app, origins=list(settings.cors_origins), expose_headers=EXPOSED_HEADERS)

    # Text-only bodies stay small; routes that take an image allow it, base64-encoded.
    with_image = settings.max_body_bytes + math.ceil(settings.max_upload_bytes * 4 / 3)

    @app.before_request
    def _request_id():
        given = request.headers.get("X-Request-Id", "")
        g.request_id = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
        request.max_content_length = policy.body_limit(app, request.endpoint, settings.max_body_bytes, with_image)

    auth.install(app, settings)

    @app.after_request
    def _echo_request_id(response):
        response.headers["X-Request-Id"] = g.get("request_id", "")
        if settings.cors_origins:
            # Answers differ by Origin (CORS headers or none): caches must key on it, on every response.
            response.vary.add("Origin")
        return response

    from gateway import (a1111_api, a1111_controlnet, a1111_extras, a1111_faces, a1111_tasks, capabilities_api,
                         catalog_api, controlnet_api, health, jobs_api, mcp_api, metrics, native, openai_api, openapi,
                         png_info, presets_api, rate_limits, upscale_api, web)

    for module in (web, native, jobs_api, upscale_api, controlnet_api, presets_api, catalog_api, openai_api,
                   a1111_api, a1111_extras, a1111_faces, a1111_tasks, a1111_controlnet, png_info, health, metrics,
                   openapi, mcp_api, capabilities_api):
        app.register_blueprint(module.bp)
    app.register_blueprint(png_info.a1111_bp)
    register_error_handlers(app, {openai_api.bp.name: openai_api.render_error,
                                  a1111_api.bp.name: a1111_api.render_error,
                                  a1111_extras.bp.name: a1111_api.render_error,
                                  a1111_faces.bp.name: a1111_api.render_error,
                                  a1111_tasks.bp.name: a1111_api.render_error,
                                  a1111_controlnet.bp.name: a1111_api.render_error,
                                  png_info.a1111_bp.name: a1111_api.render_error})
    rate_limits.install(app, settings)  # after the routes exist and after auth has named the client
    metrics.install(app)
    logging.getLogger(__name__).info("gateway ready; model servers at %s", settings.model_server)
    return app
