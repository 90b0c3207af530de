"""The seed-compatible route: ``POST /generate`` takes JSON and answers with the image itself."""

from __future__ import annotations

from flask import Blueprint, Response, g, request

from gateway.errors import ApiError
from gateway.services import services
from gateway.waiting import generate_sync

bp = Blueprint("native", __name__)


@bp.post("/generate")
def generate():
    sv = services()
    params = sv.validator.parse_json(request.get_data(cache=False))
    if params.n != 1:
        raise ApiError(400, "invalid_params", "/generate returns one image; n must be 1",
                       "Use POST /v1/jobs for several images from one request.", field="n")
    done, [(info, data)] = generate_sync(sv, params, g.request_id)
    return Response(data, mimetype=info.media_type, headers={
        "X-Seed": str(info.seed), "X-Job-Id": done.job_id,
        "Content-Disposition": f'inline; filename="{done.job_id}.{info.media_type.split("/")[1]}"'})
