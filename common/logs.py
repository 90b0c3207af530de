"""Logging set-up for both deployables: one stderr handler, text or JSON (LOG_FORMAT=json, one
object per line), at LOG_LEVEL. Each process brings the filter that adds its own fields (the
request id; the job id) and the fields it shows."""

from __future__ import annotations

import logging
import os
import sys


def configure(fields: str, text_prefix: str, static: dict[str, str], record_filter: logging.Filter) -> None:
    """``fields`` are the record attributes after time, level and logger name (e.g. ``request_id``);
    ``text_prefix`` opens each text line after the level (e.g. ``[gateway %(process)d]``)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(record_filter)
    names = fields.split()
    if os.environ.get("LOG_FORMAT", "text").lower() == "json":
        from pythonjsonlogger.json import JsonFormatter

        handler.setFormatter(JsonFormatter("%(asctime)s %(levelname)s %(name)s %(process)d "
                                           + " ".join(f"%({n})s" for n in names) + " %(message)s",
                                           static_fields=static))
    else:
        labels = {"job_id": "job", "request_id": "rid"}
        tags = " ".join(f"{labels.get(n, n)}=%({n})s" for n in names)
        handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s {text_prefix} %(name)s {tags}: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(os.environ.get("LOG_LEVEL", "INFO").upper())
