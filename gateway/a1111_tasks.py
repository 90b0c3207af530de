"""AUTOMATIC1111's per-task progress: ``POST /internal/progress`` for a task id a client gave its txt2img or
img2img (``force_task_id``), as A1111's own web page and newer clients follow their work.

A task id is the job's label (``GenerationParams.task``), so the model servers find it, finished jobs
too while they are kept: no gateway holds task state. Only the caller's own jobs are found; an id
nobody gave (or another client's) answers as A1111 answers a task it does not know: not active, not
queued, not completed, "Waiting...". ``live_preview`` is the job's step preview as a data URL, sent
when it is newer than the ``id_live_preview`` the client already has.
"""

from __future__ import annotations

import base64

import msgspec
from flask import Blueprint, jsonify

from gateway.a1111_api import decode_request, task_progress
from gateway.auth import owner
from gateway.model_client import RemoteError
from gateway.services import services
from protocol.messages import MAX_NAME_LENGTH, JobState

bp = Blueprint("a1111_tasks", __name__)
_EXAMPLE = 'Send {"id_task": "task(abc123)", "id_live_preview": -1, "live_preview": true}.'


class ProgressRequest(msgspec.Struct, kw_only=True):
    id_task: str | None = None
    id_live_preview: int | None = -1
    live_preview: bool | None = True


def _waiting(textinfo: str = "Waiting...") -> dict:
    return {"active": False, "queued": False, "completed": False, "progress": None, "eta": None,
            "live_preview": None, "id_live_preview": -1, "textinfo": textinfo}


@bp.post("/internal/progress")
def internal_progress():
    r = decode_request(ProgressRequest, _EXAMPLE)[0]
    if not r.id_task or len(r.id_task) > MAX_NAME_LENGTH:  # longer than any label a job can carry
        return jsonify(_waiting())
    sv = services()
    jobs = sv.client.task_jobs(r.id_task, owner())
    if not jobs:
        return jsonify(_waiting())
    job = jobs[-1]  # a task id given twice follows the latest
    answer = _waiting()
    if job.state.terminal:
        answer.update(completed=True, progress=1.0, textinfo=None)
    elif job.state is JobState.QUEUED:
        answer.update(queued=True, textinfo=f"In queue: {job.queue_position or 0} ahead")
    else:
        p = job.progress
        share, _, textinfo = task_progress(job)
        answer.update(active=True, progress=share, eta=p.eta_seconds if p else None, textinfo=textinfo)
        if r.live_preview and p and p.preview_step and p.preview_step != r.id_live_preview:
            try:
                info, data = sv.client.fetch_preview(job.job_id, owner())
                answer.update(live_preview=f"data:{info.media_type};base64,{base64.b64encode(data).decode()}",
                              id_live_preview=p.preview_step)
            except RemoteError:
                pass  # it finished meanwhile: the next poll says so
    return jsonify(answer)
