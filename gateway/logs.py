"""Logging for the gateway process: every line carries the request id of the request it serves
(returned in the X-Request-Id header and sent to the model server with the job). LOG_FORMAT=json
writes one JSON object per line."""

from __future__ import annotations

import logging
import os
import sys

from flask import g, has_request_context


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = g.get("request_id", "-") if has_request_context() else "-"
        return True


def configure_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestIdFilter())
    if os.environ.get("LOG_FORMAT", "text").lower() == "json":
        from pythonjsonlogger.json import JsonFormatter

        handler.setFormatter(JsonFormatter("%(asctime)s %(levelname)s %(name)s %(process)d %(request_id)s %(message)s",
                                           static_fields={"service": "gateway"}))
    else:
        handler.setFormatter(logging.Formatter(
            "%(asctime)s %(levelname)s [gateway %(process)d] %(name)s rid=%(request_id)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(os.environ.get("LOG_LEVEL", "INFO").upper())
