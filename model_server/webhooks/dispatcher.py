"""The webhook thread: sends each due delivery, records the outcome, and schedules the next
attempt from WEBHOOK_RETRY_SECONDS until one succeeds or every wait is used. One attempt at a
time: a slow receiver costs at most WEBHOOK_TIMEOUT_SECONDS, and the job thread never waits on
the network."""

from __future__ import annotations

import logging
import threading
import time

import msgspec

from model_server.webhooks.outbox import Outbox
from model_server.webhooks.sender import Sender

log = logging.getLogger(__name__)
_SWEEP_SECONDS = 60.0


class Dispatcher:
    """Delivers the outbox's due entries on a thread of its own (see the module)."""

    def __init__(self, outbox: Outbox, sender: Sender, retry_seconds: tuple[float, ...], stats: dict,
                 clock=time.time):
        self.outbox = outbox
        self.sender = sender
        self.retry_seconds = retry_seconds
        self.stats = stats
        for key in ("webhooks_delivered", "webhooks_failed", "webhook_attempts", "webhook_attempts_failed"):
            stats.setdefault(key, 0)
        self._clock = clock
        self._stop = threading.Event()
        self._drain_until = 0.0
        self._thread = threading.Thread(target=self._run, name="webhooks", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, drain_seconds: float = 2.0) -> None:
        """Stop after what is due now is sent, for at most ``drain_seconds`` (the rest waits on disk)."""
        self._drain_until = time.monotonic() + drain_seconds
        self._stop.set()
        self.outbox.wakeup.set()
        self._thread.join(drain_seconds + self.sender.timeout)

    def _run(self) -> None:
        next_sweep = 0.0
        while True:
            if time.monotonic() >= next_sweep:
                self.outbox.sweep()
                next_sweep = time.monotonic() + _SWEEP_SECONDS
            for entry in self.outbox.due():
                if self._stop.is_set() and time.monotonic() >= self._drain_until:
                    return
                self.attempt(entry)
            if self._stop.is_set():
                return
            wait = self.outbox.seconds_to_next()
            if wait is None or wait > 0:
                # Cleared after waking, before looking: an entry added meanwhile is seen by the next due().
                self.outbox.wakeup.wait(min(_SWEEP_SECONDS if wait is None else wait, _SWEEP_SECONDS))
                self.outbox.wakeup.clear()

    def attempt(self, entry) -> None:
        """One attempt at ``entry``, its outcome recorded."""
        result = self.sender.post(entry.url, entry.event_id, entry.body)
        attempts = entry.attempts + 1
        self.stats["webhook_attempts"] += 1
        now = self._clock()
        if result.ok:
            done = msgspec.structs.replace(entry, state="delivered", attempts=attempts, last_status=result.status,
                                           last_error="", delivered_at=now)
            self.stats["webhooks_delivered"] += 1
            log.info("job %s: webhook %s delivered (attempt %d)", entry.job_id, entry.event_id, attempts)
        else:
            self.stats["webhook_attempts_failed"] += 1
            waits = self.retry_seconds
            give_up = result.final or attempts > len(waits)
            done = msgspec.structs.replace(entry, state="failed" if give_up else "pending", attempts=attempts,
                                           last_status=result.status, last_error=result.error,
                                           next_at=now if give_up else now + waits[attempts - 1])
            if give_up:
                self.stats["webhooks_failed"] += 1
            log.warning("job %s: webhook attempt %d failed (%s)%s", entry.job_id, attempts, result.error,
                        "; giving up" if give_up else f"; next in {waits[attempts - 1]:g} s")
        self.outbox.record(done)
