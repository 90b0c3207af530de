"""Logging for the model server: every line about a job carries its job id and the gateway's
request id (sent in Submit), so one grep follows a request across both processes. LOG_FORMAT=json
writes one JSON object per line. The Hugging Face token is redacted from every line."""

from __future__ import annotations

import contextlib
import contextvars
import logging

from common.logs import configure

_job: contextvars.ContextVar[tuple[str, str]] = contextvars.ContextVar("job", default=("-", "-"))


@contextlib.contextmanager
def job_context(job_id: str, request_id: str):
    """Lines logged inside (by us or by libraries, on this thread) name this job and request."""
    token = _job.set((job_id, request_id or "-"))
    try:
        yield
    finally:
        _job.reset(token)


class JobFilter(logging.Filter):
    def __init__(self, secrets: tuple[str, ...] = ()):
        super().__init__()
        self.secrets = tuple(s for s in secrets if s)

    def filter(self, record: logging.LogRecord) -> bool:
        record.job_id, record.request_id = _job.get()
        if self.secrets:
            message = record.getMessage()
            for secret in self.secrets:
                message = message.replace(secret, "***")
            record.msg, record.args = message, None
        return True


def configure_logging(secrets: tuple[str, ...] = ()) -> None:
    configure("job_id request_id", "[model-server]", {"process": "model-server"}, JobFilter(secrets))
    # transformers warns that torchvision is missing whenever the safety checker's CLIP image
    # processor is built, then uses the PIL one, which is what we want: torchvision would add
    # hundreds of MB for nothing. Only that message is dropped.
    logging.getLogger("transformers.utils.import_utils").addFilter(_NoTorchvisionNotice())
    # The hub client's HTTP library logs every request; a download's progress has its own lines.
    logging.getLogger("httpx2").setLevel(logging.WARNING)


class _NoTorchvisionNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "requires torchvision (not installed)" not in record.getMessage()
