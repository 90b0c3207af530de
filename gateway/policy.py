"""Route policy attached to the views themselves, so guards read it from the view, not from lists.

``starts_work(parse)`` marks a view that starts generation work. ``parse()`` validates the
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


def parse_first(view) -> Callable[[], object] | None:
    """The parser of a view that starts work, else None."""
    return getattr(view, "parse_first", None)
