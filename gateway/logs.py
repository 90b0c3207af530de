"""Logging for the gateway process: every line carries the request id of the request it serves
(returned in the X-Request-Id header and sent to the model server with the job). LOG_FORMAT=json
writes one JSON object per line."""

from __future__ import annotations

import logging

from flask import g, has_request_context

from common.logs import configure


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = g.get("request_id", "-") if has_request_context() else "-"
        return True


def configure_logging() -> None:
    configure("request_id", "[gateway %(process)d]", {"service": "gateway"}, RequestIdFilter())
