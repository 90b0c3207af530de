"""Optional API keys: ``Authorization: Bearer KEY`` (what the OpenAI SDK sends), HTTP Basic with
the key as password (AUTOMATIC1111-style clients such as webuiapi), ``X-API-Key``, or the
``sd_api_key`` cookie the web page sets (EventSource and <img> cannot send headers).

Off when no key is configured. Keys come from API_KEYS and/or API_KEYS_FILE and are compared in
constant time. Routes marked ``policy.public`` (the page, the API documents, liveness) are always
open; ``policy.probe`` routes (health, readiness, metrics) only with AUTH_PUBLIC_HEALTH=true. The
caller's identity (a key fingerprint or the client address) is ``g.client_id``, used by rate
limits and per-client queue caps, and it owns the jobs it submits: every job route answers 404
for another client's job, as for an unknown id. ADMIN_API_KEYS are keys that may also see and
cancel every job (operators).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from urllib.parse import unquote

from flask import Flask, g, request

from gateway import policy
from gateway.errors import ApiError
from gateway.settings import GatewaySettings


def presented_key() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    if scheme.lower() == "basic" and value.strip():
        try:
            user, _, password = base64.b64decode(value.strip()).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return password or user
    cookie = request.cookies.get("sd_api_key")
    return request.headers.get("X-API-Key") or (unquote(cookie) if cookie else None)


def client_id() -> str:
    """Who is asking: an API key fingerprint, or the client address."""
    return g.get("client_id") or "ip:" + (request.remote_addr or "")


def owner() -> str:
    """Whose jobs the caller may see and stop: its own, or every one ("") with an admin key."""
    return "" if g.get("admin") else client_id()


def fingerprint(key: str) -> str:
    return "key:" + hashlib.sha256(key.encode()).hexdigest()[:12]


class ApiKeys:
    """The configured keys, checked in constant time against every one of them."""

    def __init__(self, keys: tuple[str, ...]):
        self._keys = [k.encode() for k in keys]

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def valid(self, presented: str) -> bool:
        given = presented.encode()
        # Compare against every key, so timing does not tell how many keys were tried.
        return sum(hmac.compare_digest(given, key) for key in self._keys) > 0


def install(app: Flask, settings: GatewaySettings) -> None:
    keys = ApiKeys(settings.api_keys + settings.admin_api_keys)
    admins = ApiKeys(settings.admin_api_keys)
    open_access = {policy.PUBLIC, policy.PROBE} if settings.auth_public_health else {policy.PUBLIC}

    @app.before_request
    def _authenticate():
        key = presented_key()
        valid = keys.enabled and bool(key) and keys.valid(key)
        if valid:
            g.client_id = fingerprint(key)  # otherwise client_id() falls back to the address
            g.admin = admins.enabled and admins.valid(key)
        if (not keys.enabled or valid or request.method == "OPTIONS"
                or policy.access_of(app, request.endpoint) in open_access):
            return None
        realm = 'Basic realm="sd-cpu"' if request.path.startswith("/sdapi/") else 'Bearer realm="sd-cpu"'
        raise ApiError(401, "unauthorized",
                       "a valid API key is required" if key is None else "the API key is not valid",
                       "Send Authorization: Bearer <key> (or HTTP Basic with the key as password).",
                       headers={"WWW-Authenticate": realm})
