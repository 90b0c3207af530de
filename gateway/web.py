"""The web page at ``/``: static HTML, CSS and JavaScript, no build step."""

from __future__ import annotations

from flask import Blueprint, current_app

from gateway.policy import public, unlimited

bp = Blueprint("web", __name__)


@bp.get("/")
@public
@unlimited
def index():
    return current_app.send_static_file("index.html")
