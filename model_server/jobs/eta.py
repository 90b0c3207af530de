"""How long jobs will take: seconds per step, smoothed across jobs, turned into ETAs.

Not thread-safe on its own: the job table calls it under its lock.
"""

from __future__ import annotations

from model_server.jobs.job import Job


class StepClock:
    """The smoothed seconds per step, and the ETAs made from it."""

    def __init__(self):
        self.seconds_per_step: float | None = None  # the latest smoothed rate, across jobs

    def record(self, job: Job, seconds: float) -> None:
        # Smooth out one-off stalls; the first step also carries warm-up work.
        prev = job.seconds_per_step
        job.seconds_per_step = seconds if prev is None else 0.7 * prev + 0.3 * seconds
        self.seconds_per_step = job.seconds_per_step

    def remaining(self, job: Job) -> float | None:
        """Seconds until a running job is done."""
        sps = job.seconds_per_step or self.seconds_per_step
        if sps is None:
            return None
        steps_left = (job.params.n - job.image_index) * job.total_steps - job.step
        return round(max(steps_left, 0) * sps, 1)

    def until_done(self, running: Job | None, ahead: list[Job], job: Job) -> float | None:
        """Seconds until a queued job is done: the running job, those ahead of it, then its own steps."""
        if self.seconds_per_step is None:
            return None
        total = (self.remaining(running) or 0.0) if running else 0.0
        total += sum(j.total_steps * j.params.n for j in ahead + [job]) * self.seconds_per_step
        return round(total, 1)

    def until_a_slot_frees(self, running: Job | None) -> float:
        """For Retry-After on a full queue: a slot frees when the running job ends."""
        wait = self.remaining(running) if running else None
        return round(max(wait or 10.0, 1.0), 1)
