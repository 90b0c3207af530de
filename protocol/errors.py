"""Error codes that cross the wire, and the exception raised for undecodable frames."""

from __future__ import annotations

import enum


class ErrorCode(str, enum.Enum):
    """Why a request or a job failed. Strings on the wire so new codes stay readable."""

    INVALID_PARAMS = "invalid_params"
    QUEUE_FULL = "queue_full"
    NOT_READY = "not_ready"
    SHUTTING_DOWN = "shutting_down"
    CANCELLED = "cancelled"
    OUT_OF_MEMORY = "out_of_memory"
    PIPELINE_ERROR = "pipeline_error"
    NOT_FOUND = "not_found"
    EXPIRED = "expired"
    PROTOCOL_MISMATCH = "protocol_mismatch"
    MODEL_SERVER_LOST = "model_server_lost"
    DISK_FULL = "disk_full"
    OVER_BUDGET = "over_memory_budget"  # the job's predicted peak is over the server's memory budget (MEMORY_BUDGET)
    DEADLINE = "deadline"  # a job's deadline_seconds cannot be met (at submit), or passed while it waited


class ProtocolError(Exception):
    """A frame could not be decoded: wrong version, wrong shape or not a known message."""

    def __init__(self, message: str, code: ErrorCode = ErrorCode.PROTOCOL_MISMATCH, ref: int = 0):
        super().__init__(message)
        self.code = code
        self.ref = ref  # the sender's correlation number, when the envelope could be read
