"""``/mcp``: the service as an MCP server (streamable HTTP), for agents and MCP clients (Claude
Desktop, Open WebUI, any SDK client).

The official ``mcp`` SDK serves the protocol, every revision it speaks (the initialize handshake and
the stateless 2026 envelope): its ASGI app runs on one event loop thread per gateway process and is
called from this WSGI route through ``a2wsgi`` (``gateway/mcp_server.py``, loaded on the first request).
Stateless, so any worker or replica answers any request, as for the rest of the API; replies stream
(SSE) so a waiting tool can send progress. The route sits behind the gateway's own guards (API keys,
the body limit, rate limits: a tool call that starts work spends the ``generate`` budget, anything
else the ``read`` one); the caller's identity reaches the tools in a header this route writes
(whatever the client sent under that name is replaced), marked with a secret of this process.
Browsers' cross-site requests are refused unless their origin is in CORS_ORIGINS, as the MCP
specification asks of servers (DNS rebinding).
"""

from __future__ import annotations

import io
import json
import threading
import urllib.parse

from flask import Blueprint, Response, g, request

from gateway.auth import client_id, owner
from gateway.errors import ApiError
from gateway.policy import starts_work_when, takes_images
from gateway.services import Services, services

bp = Blueprint("mcp", __name__)
CALLER_HEADER = "x-sdcpu-mcp-caller"
WORK_TOOLS = frozenset({"generate_image", "edit_image", "upscale_image"})  # these spend the generate budget
_bridge = None
_bridge_lock = threading.Lock()


def bridge(sv: Services):
    """This process's bridge to the SDK's server, made on first use (after gunicorn forked the worker)."""
    global _bridge
    with _bridge_lock:
        if _bridge is None:
            from gateway.mcp_server import Bridge  # the SDK loads here, not in every gateway process

            _bridge = Bridge(sv, CALLER_HEADER)
        return _bridge


def _message() -> dict:
    try:
        message = json.loads(request.get_data(cache=True) or b"null")
    except ValueError:
        return {}
    return message if isinstance(message, dict) else {}


def starts_a_job() -> bool:
    """Whether this request is a tool call that starts a job (it then spends the generate budget)."""
    message = _message()
    params = message.get("params")
    return message.get("method") == "tools/call" and isinstance(params, dict) and params.get("name") in WORK_TOOLS


def _same_site(origin: str) -> bool:
    allowed = services().settings.cors_origins
    return origin in allowed or urllib.parse.urlsplit(origin).netloc == request.host


@bp.post("/mcp")  # stateless: no server-initiated stream (GET) and no session to end (DELETE), so 405 for both
@starts_work_when(starts_a_job)
@takes_images
def mcp():
    if request.mimetype != "application/json":
        raise ApiError(415, "unsupported_media_type", "MCP messages are JSON-RPC in a JSON body",
                       "Send Content-Type: application/json (an MCP client does).")
    origin = request.headers.get("Origin")
    if origin and not _same_site(origin):
        raise ApiError(403, "forbidden_origin", f"requests from {origin[:100]} are not allowed",
                       "Add the page's origin to CORS_ORIGINS, or call /mcp from an MCP client.")
    sv = services()
    b = bridge(sv)
    from gateway.mcp_tools import CONNECTIONS  # loaded with the bridge, on the first call

    body = request.get_data(cache=True)
    environ = dict(request.environ)
    environ["wsgi.input"], environ["CONTENT_LENGTH"] = io.BytesIO(body), str(len(body))
    public = sv.settings.public_url or request.host_url
    connection = CONNECTIONS.opened(request.environ)
    who = {"client_id": client_id(), "owner": owner(), "request_id": g.get("request_id", ""),
           "base_url": public.rstrip("/"), "connection": connection}
    environ["HTTP_" + CALLER_HEADER.upper().replace("-", "_")] = f"{b.token} {json.dumps(who)}"
    response = Response.from_app(b.wsgi, environ)
    response.call_on_close(lambda: CONNECTIONS.closed(connection))
    return response

