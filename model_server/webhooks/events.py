"""A job's end as its webhook tells it: ``{"type": "job.succeeded", "timestamp", "data": {...}}``,
the Standard Webhooks payload shape, with the job as the native API shows it (paths, not the images)."""

from __future__ import annotations

import datetime

import msgspec

from model_server.jobs.outputs import JobRecord


def event_body(record: JobRecord) -> bytes:
    finished = record.finished_at or 0.0
    job = f"/v1/jobs/{record.job_id}"
    data = {
        "id": record.job_id, "state": record.state.value, "created_at": record.created_at,
        "started_at": record.started_at, "finished_at": record.finished_at, "interrupted": record.interrupted,
        "model": record.model, "engine": record.engine, "task": record.params.task or None,
        "error": None if record.error is None else {"code": record.error.code.value, "message": record.error.message,
                                                     "hint": record.error.hint, "retryable": record.error.retryable},
        "images": [{"index": i.index, "seed": i.seed, "media_type": i.media_type, "width": i.width,
                    "height": i.height, "size_bytes": i.size_bytes, "url": f"{job}/image?index={i.index}"}
                   for i in record.images],
        "links": {"self": job},
    }
    timestamp = datetime.datetime.fromtimestamp(finished, datetime.timezone.utc).isoformat().replace("+00:00", "Z")
    return msgspec.json.encode({"type": f"job.{record.state.value}", "timestamp": timestamp, "data": data})
