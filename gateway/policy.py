"""Route policy attached to the views themselves, so guards read it from the view, not from lists.

By default a route needs a key (when keys are configured) and counts against the ``read`` rate
limit. ``public`` routes never need a key (the page, the API documents, liveness); ``probe``
routes (health, readiness, metrics) need one unless AUTH_PUBLIC_HEALTH, and are never rate
limited, so probes keep working whatever the limit store does; ``unlimited`` routes are never
rate limited. ``starts_work(parse)`` marks a view that starts generation work; ``starts_work_when(predicate)``
one that starts it for some requests only. ``parse()`` validates the
request and returns what the view needs (its first argument). The rate limiter runs ``parse``
*before* it charges the generation budget, so a malformed request gets its 400 and costs nothing:
a user fixing a typo is not an abuser, and a malformed request costs no model time.
"""

from __future__ import annotations

import functools
from typing import Callable

from flask import g


def starts_work(parse: Callable[[], object]):
    def mark(view):
        @functools.wraps(view)
        def run(**kwargs):
            if "parsed" not in g:  # the rate limiter may have parsed it already
                g.parsed = parse()
            return view(g.parsed, **kwargs)

        run.parse_first = parse
        return run

    return mark


def starts_work_when(predicate: Callable[[], bool]):
    """One route for requests that start work and others (``/mcp``: a tool call that starts a job, or anything
    else): those ``predicate()`` names spend the ``generate`` budget, the others the ``read`` one."""
    def mark(view):
        view.work_when = predicate
        return view

    return mark


def work_predicate(view) -> Callable[[], bool] | None:
    """The predicate of a view marked ``starts_work_when``, else None."""
    return getattr(view, "work_when", None)


KEY, PUBLIC, PROBE = "key", "public", "probe"


def public(view):
    view.access = PUBLIC
    return view


def probe(view):
    view.access, view.unlimited = PROBE, True
    return view


def unlimited(view):
    view.unlimited = True
    return view


def access_of(app, endpoint: str | None) -> str:
    if endpoint == "static":  # Flask's own route for the page's files
        return PUBLIC
    return getattr(app.view_functions.get(endpoint), "access", KEY)


def is_unlimited(app, endpoint: str) -> bool:
    return endpoint == "static" or getattr(app.view_functions.get(endpoint), "unlimited", False)


def takes_images(view):
    """The route's body may carry an image: it may be MAX_UPLOAD_BYTES (base64) larger."""
    view.takes_images = True
    return view


def body_limit(app, endpoint: str | None, text_only: int, images: int) -> int:
    return images if getattr(app.view_functions.get(endpoint), "takes_images", False) else text_only


def parse_first(view) -> Callable[[], object] | None:
    """The parser of a view that starts work, else None."""
    return getattr(view, "parse_first", None)
