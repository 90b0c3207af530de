"""Every failure becomes an :class:`ApiError`, rendered in its route family's JSON shape.

The native and seed routes answer ``{"error", "code", "hint"}``; create_app registers the OpenAI and
A1111 façades' own renderers (keyed by blueprint name), so a rate limit, an
auth failure or an unexpected error looks right to each family's clients. Model-server errors
(``ErrorInfo``) map onto HTTP statuses in one table. Never a traceback in a response.
"""

from __future__ import annotations

import logging
import math
from typing import Callable

from flask import Flask, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from gateway.model_client import ModelServerUnavailable, RemoteError
from protocol.errors import ErrorCode
from protocol.messages import ErrorInfo

log = logging.getLogger(__name__)

STATUS_FOR_CODE = {
    ErrorCode.INVALID_PARAMS: 400,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.CANCELLED: 409,
    ErrorCode.EXPIRED: 410,
    ErrorCode.DEADLINE: 422,
    ErrorCode.OVER_BUDGET: 422,
    ErrorCode.QUEUE_FULL: 429,
    ErrorCode.PIPELINE_ERROR: 500,
    ErrorCode.PROTOCOL_MISMATCH: 502,
    ErrorCode.NOT_READY: 503,
    ErrorCode.SHUTTING_DOWN: 503,
    ErrorCode.OUT_OF_MEMORY: 503,
    ErrorCode.DISK_FULL: 503,
    ErrorCode.MODEL_SERVER_LOST: 503,
}

_HTTP_HINTS = {
    404: "See GET /openapi.json for the routes this service offers.",
    405: "See GET /openapi.json for the methods each route accepts.",
    413: "Send a smaller request body.",
}


class ApiError(Exception):
    """An error answered as JSON with an HTTP status (and Retry-After where it helps)."""

    def __init__(self, status: int, code: str, message: str, hint: str = "",
                 retry_after: float | None = None, field: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.hint = status, code, message, hint
        self.retry_after, self.field = retry_after, field
        self.extra_headers = headers or {}

    @classmethod
    def from_info(cls, error: ErrorInfo) -> "ApiError":
        status = STATUS_FOR_CODE.get(error.code, 500)
        retry_after = error.retry_after if error.retryable or status in (429, 503) else None
        if status in (429, 503) and retry_after is None:
            retry_after = 5.0
        return cls(status, error.code.value, error.message, error.hint, retry_after, field=error.field or None)

    def body(self) -> dict:
        body = {"error": self.message, "code": self.code, "hint": self.hint}
        if self.field:
            body["field"] = self.field
        if self.retry_after is not None:
            body["retry_after"] = self.retry_after
        return body

    def headers(self) -> dict:
        headers = dict(self.extra_headers)
        if self.retry_after is not None:
            headers["Retry-After"] = str(max(1, math.ceil(self.retry_after)))
        return headers


def native_response(err: ApiError):
    return jsonify(err.body()), err.status, err.headers()


# Errors raised while routing (404, 405) have no blueprint yet, so the family is told by the path.
FAMILY_PREFIXES = {"/v1/images/": "openai", "/v1/models": "openai", "/sdapi/": "a1111", "/controlnet/": "a1111"}


def render(err: ApiError):
    """The error in its route family's shape (the renderers create_app registered), else native."""
    family = request.blueprint or next(
        (name for prefix, name in FAMILY_PREFIXES.items() if request.path.startswith(prefix)), "")
    return current_app.extensions["sd_error_renderers"].get(family, native_response)(err)


def as_api_error(exc: Exception) -> ApiError:
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, (RemoteError, ModelServerUnavailable)):
        return ApiError.from_info(exc.error)
    if isinstance(exc, HTTPException):
        code = (exc.name or "error").lower().replace(" ", "_")
        allowed = getattr(exc, "valid_methods", None)  # a 405 says which methods would do (RFC 9110)
        return ApiError(exc.code or 500, code, exc.description or exc.name, _HTTP_HINTS.get(exc.code, ""),
                        headers={"Allow": ", ".join(sorted(allowed))} if allowed else None)
    raise TypeError(f"not an API error: {exc!r}")


def register_error_handlers(app: Flask, renderers: dict[str, Callable[[ApiError], object]]) -> None:
    """``renderers``: blueprint name -> the function that renders errors in that family's shape."""
    app.extensions["sd_error_renderers"] = dict(renderers)

    @app.errorhandler(ApiError)
    @app.errorhandler(RemoteError)
    @app.errorhandler(ModelServerUnavailable)
    @app.errorhandler(HTTPException)
    def _known(exc):
        err = as_api_error(exc)
        if err.status >= 500:
            log.warning("%s %s -> %d %s: %s", request.method, request.path, err.status, err.code, err.message)
        return render(err)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.path)
        return render(ApiError(500, "internal_error", "the gateway hit an unexpected error",
                               "Retry; if it persists, report it with the X-Request-Id header."))
