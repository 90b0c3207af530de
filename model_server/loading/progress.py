"""The load's progress: which phase it is in, and for a download the bytes, rate and time left.

The worker thread writes it as it loads; the IO thread reads ``status()`` for every Pong, so
/health and the page show it. It logs one line when a phase starts, one when it ends and one every
``LOG_EVERY`` seconds in between: a container log gets a readable trail, not a terminal progress
bar redrawn a thousand times.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time

from model_server.errors import redact_paths
from protocol.messages import LoadStatus

log = logging.getLogger(__name__)
LOG_EVERY = 5.0
# The rate is measured over the last RATE_WINDOW seconds, so a stall shows as a falling rate and
# the time left follows the link as it is now, not its average since the start.
RATE_WINDOW = 10.0


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def human_seconds(s: float) -> str:
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


class LoadProgress:
    """The current load phase and its counters; thread-safe."""

    def __init__(self, clock=time.monotonic, log_every: float | None = None):
        self._clock, self._log_every = clock, LOG_EVERY if log_every is None else log_every
        self._lock = threading.Lock()
        self._phase: str | None = None
        self._detail = ""
        self._started = 0.0
        self._done = 0
        self._total: int | None = None
        self._samples: list[tuple[float, int]] = []
        self._finished: dict[str, float] = {}
        self._ticker: threading.Event | None = None

    def start(self, phase: str, detail: str = "", total_bytes: int | None = None, done_bytes: int = 0) -> None:
        """Enter ``phase`` (ending the one before); ``total_bytes`` for a download."""
        self.end()
        now = self._clock()
        with self._lock:
            self._phase, self._detail, self._started = phase, detail, now
            self._done, self._total, self._samples = done_bytes, total_bytes, [(now, done_bytes)]
        if total_bytes is None:
            log.info("%s: %s", phase, detail)
        else:
            log.info("%s: %s, %s%s", phase, detail, human_bytes(total_bytes),
                     f" ({human_bytes(done_bytes)} already here, resuming)" if done_bytes else "")
        stop = self._ticker = threading.Event()
        threading.Thread(target=self._tick, args=(stop,), name="load-progress", daemon=True).start()

    def add(self, n: int) -> None:
        """``n`` more bytes downloaded."""
        now = self._clock()
        with self._lock:
            self._done += n
            if now - self._samples[-1][0] >= 0.25:  # a sample per quarter second is plenty for a rate
                self._samples.append((now, self._done))
                while len(self._samples) > 2 and now - self._samples[1][0] > RATE_WINDOW:
                    self._samples.pop(0)

    def end(self) -> None:
        """The current phase is over (the next ``start`` or the load's end calls this)."""
        with self._lock:
            phase, ticker = self._phase, self._ticker
            if phase is None:
                return
            seconds = round(self._clock() - self._started, 1)
            self._finished[phase] = round(self._finished.get(phase, 0.0) + seconds, 1)
            self._phase, self._ticker = None, None
        if ticker is not None:
            ticker.set()
        log.info("%s: done in %s", phase, human_seconds(seconds))

    @contextlib.contextmanager
    def over(self):
        """A span of work whose phases end with it: on the way out the phase it is in ends (halts, on
        an error), so no periodic log line outlives the work that started the phase (a conversion
        during a job, a model switch)."""
        try:
            yield self
        except BaseException:
            self.halt()
            raise
        self.end()

    def halt(self) -> None:
        """The current phase failed: its periodic log lines stop; the phase and its counters stay for
        ``status`` (how far it got)."""
        with self._lock:
            ticker, self._ticker = self._ticker, None
        if ticker is not None:
            ticker.set()

    def status(self) -> LoadStatus | None:
        """What /health shows: the phase now, None before any. A failed load halts its phase rather
        than ending it, so the phase it failed in stays, with its counters (how much was downloaded)."""
        with self._lock:
            if self._phase is None:
                return None if not self._finished else LoadStatus(phase="done", finished=dict(self._finished))
            now = self._clock()
            rate = self._rate(now)
            eta = None
            if self._total is not None and rate:
                eta = round(max(self._total - self._done, 0) / rate, 1)
            # What /health and the page show: never a server's path (the log keeps it, for the operator).
            return LoadStatus(phase=self._phase, detail=redact_paths(self._detail)[:500],
                              seconds=round(now - self._started, 1),
                              bytes_done=self._done if self._total is not None else None, bytes_total=self._total,
                              rate_bytes_per_second=round(rate, 1) if rate is not None else None, eta_seconds=eta,
                              finished=dict(self._finished))

    def _rate(self, now: float) -> float | None:
        if self._total is None or len(self._samples) < 2:
            return None
        (t0, b0), (t1, b1) = self._samples[0], (now, self._done)
        return (b1 - b0) / (t1 - t0) if t1 > t0 else None

    def _amount(self) -> str:
        if self._total is None:
            return ""
        share = f" ({100 * self._done / self._total:.0f}%)" if self._total else ""
        return f"{human_bytes(self._done)} of {human_bytes(self._total)}{share}"

    def _tick(self, stop: threading.Event) -> None:
        while not stop.wait(self._log_every):
            status = self.status()
            if status is None or status.phase == "done":
                return
            if status.bytes_total is not None:
                with self._lock:
                    amount = self._amount()
                rate = f", {human_bytes(status.rate_bytes_per_second or 0)}/s" if status.rate_bytes_per_second else ""
                left = f", about {human_seconds(status.eta_seconds)} left" if status.eta_seconds is not None else ""
                log.info("%s: %s%s%s", status.phase, amount, rate, left)
            else:
                log.info("%s: %s so far", status.phase, human_seconds(status.seconds))
