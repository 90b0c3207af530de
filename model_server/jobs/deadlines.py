"""A job's deadline, kept at submit and while it waits.

At submit, a job with ``deadline_seconds`` is refused at once when the jobs ahead of it (the running
one's remaining time and every queued one's) and its own run, each predicted from this host's
measured speeds (``speed.py``), would end after it; the refusal names the prediction and what would
fit (a faster preset, a smaller size) by the same measurements. With nothing measured to go by, it
is accepted. A queued job whose deadline passes ends failed with that reason (``JobTable.fail_overdue``,
each heartbeat and before a job starts); a running one is left to finish: it was predicted to.
"""

from __future__ import annotations

import msgspec

from model_server import errors
from model_server.jobs.speed import SpeedTable
from protocol.messages import GenerationParams
from protocol.presets import PRESETS

_FASTER_FIRST = ("turbo", "fast", "balanced", "quality")
_SMALLER = (0.75, 0.5)  # of each side, down to multiples of 64


def check(params: GenerationParams, table, speeds: SpeedTable, model: str, unavailable: dict[str, str]) -> None:
    """Raise a Rejection when ``params`` cannot be done by its deadline (see the module)."""
    deadline = params.deadline_seconds
    if not deadline:
        return
    own = speeds.predict(model, params)
    if own is None:
        return
    ahead = table.seconds_ahead(lambda job: speeds.predict(job.model or job.params.model or model, job.params))
    if ahead + own <= deadline:
        return
    raise errors.deadline_unmeetable(deadline, ahead, own, _suggestion(params, model, deadline, ahead, speeds,
                                                                       unavailable))


def _suggestion(params, model, deadline, ahead, speeds, unavailable) -> str:
    if ahead >= deadline:
        return (f"The jobs ahead alone take about {ahead:.0f} s: allow more time, or submit when the queue is "
                "shorter.")
    fits = []
    for name in _FASTER_FIRST:
        preset = PRESETS[name]
        if name == params.preset or name in unavailable:
            continue
        other = msgspec.structs.replace(params, preset=name, steps=preset.steps)
        seconds = speeds.predict(model, other)
        if seconds is not None and ahead + seconds <= deadline:
            fits.append(f"the {name} preset (about {ahead + seconds:.0f} s)")
            break
    for share in _SMALLER:
        width, height = (max(64, int(side * share) // 64 * 64) for side in (params.width, params.height))
        if (width, height) == (params.width, params.height):
            continue
        seconds = speeds.predict(model, msgspec.structs.replace(params, width=width, height=height, hires=None))
        if seconds is not None and ahead + seconds <= deadline:
            fits.append(f"{width}x{height} (about {ahead + seconds:.0f} s)")
            break
    if not fits:
        return f"Allow at least {ahead + (speeds.predict(model, params) or 0):.0f} s."
    return f"Within {deadline:g} s: {' or '.join(fits)}, or allow more time."
