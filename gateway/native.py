"""The seed-compatible route: ``POST /generate`` takes JSON and answers with the image itself."""

from __future__ import annotations

from flask import Blueprint, Response

from gateway.errors import ApiError
from gateway.policy import starts_work, takes_images
from gateway.services import services
from gateway.waiting import generate_sync

bp = Blueprint("native", __name__)


def _parse():
    generation = services().validator.parse_body()
    if generation.params.n != 1:
        raise ApiError(400, "invalid_params", "/generate returns one image; n must be 1",
                       "Use POST /v1/jobs for several images from one request.", field="n")
    return generation


@bp.post("/generate")
@starts_work(_parse)
@takes_images
def generate(generation):
    done, [(info, data)] = generate_sync(services(), generation)
    return Response(data, mimetype=info.media_type, headers={
        "X-Seed": str(info.seed), "X-Job-Id": done.job_id,
        "Content-Disposition": f'inline; filename="{done.job_id}.{info.media_type.split("/")[1]}"'})
