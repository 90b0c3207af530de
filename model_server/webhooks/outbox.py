"""What the server owes webhooks: one delivery per ended job with a ``callback_url``, kept in
``OUTPUTS_DIR/webhooks/<job_id>.json`` until its outcome is known and the job's results expire.

One entry per job, made when its end is recorded (and at start for an ended job a crash left
without one), is what makes "never twice for one event": its ``event_id`` and body are fixed when
it is made, and every retry, across restarts too, sends those same bytes under that id, which is
how receivers deduplicate. A delivered entry is written as delivered before anything else is sent.
Without OUTPUTS_DIR the entries live in memory only. A write that fails keeps the entry in memory
(logged): delivery goes on, only a restart could then lose it.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from pathlib import Path
from typing import Literal

import msgspec

from model_server.jobs.disk import atomic_write
from model_server.jobs.outputs import JOB_ID, JobRecord
from model_server.webhooks.events import event_body
from protocol.messages import WebhookStatus

log = logging.getLogger(__name__)
FOLDER = "webhooks"


class Delivery(msgspec.Struct, kw_only=True):
    """One job's webhook: the event (fixed at creation) and how its delivery stands."""

    job_id: str
    url: str
    event_id: str
    body: bytes  # the JSON every attempt sends
    ended_at: float  # when the job ended: the entry is swept with the job's results
    state: Literal["pending", "delivered", "failed"] = "pending"
    attempts: int = 0
    next_at: float = 0.0  # wall clock of the next attempt, while pending
    last_status: int | None = None
    last_error: str = ""
    delivered_at: float | None = None

    def status(self) -> WebhookStatus:
        return WebhookStatus(event_id=self.event_id, state=self.state, attempts=self.attempts,
                             last_status=self.last_status, last_error=self.last_error[:300],
                             next_attempt_at=self.next_at if self.state == "pending" else None,
                             delivered_at=self.delivered_at)


class Outbox:
    """Every job's delivery, in memory and (with a folder) on disk; waited on by the dispatcher."""

    def __init__(self, folder: str | Path | None, ttl_seconds: float, clock=time.time):
        self.folder = Path(folder) / FOLDER if folder else None
        self.ttl_seconds = ttl_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self.wakeup = threading.Event()  # set when a delivery is added: the dispatcher looks again
        self._entries: dict[str, Delivery] = {}
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
            for path in self.folder.glob("*.json"):
                try:
                    entry = msgspec.json.decode(path.read_bytes(), type=Delivery)
                except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
                    log.error("webhook entry %s cannot be read, left alone: %s", path.name, exc)
                    continue
                if JOB_ID.match(entry.job_id) and path.stem == entry.job_id:
                    self._entries[entry.job_id] = entry
            pending = sum(e.state == "pending" for e in self._entries.values())
            if pending:
                log.info("%d webhook(s) still to deliver from before the restart", pending)

    # --- what the job table tells it ----------------------------------------------------

    def job_ended(self, record: JobRecord) -> None:
        """Owe ``record``'s end to its callback_url (nothing when it has none, or already owes one)."""
        url = record.params.callback_url
        if not url or not record.state.terminal:
            return
        with self._lock:
            if record.job_id in self._entries:
                return
            entry = Delivery(job_id=record.job_id, url=url, event_id=f"msg_{uuid.uuid4().hex}",
                             body=event_body(record), ended_at=record.finished_at or self._clock(),
                             next_at=self._clock())
            self._entries[record.job_id] = entry
        self._write(entry)
        self.wakeup.set()

    def owe_missing(self, records) -> None:
        """At start: an ended job whose entry a crash prevented (between its record and its entry, or
        marked lost at this start) is owed now. ``records``: those whose results have not expired, so a
        delivery already settled and swept is never made again."""
        for record in records:
            self.job_ended(record)

    def status(self, job_id: str) -> WebhookStatus | None:
        with self._lock:
            entry = self._entries.get(job_id)
            return entry.status() if entry is not None else None

    # --- what the dispatcher does --------------------------------------------------------

    def due(self) -> list[Delivery]:
        """Pending deliveries whose time has come, oldest first (copies: the caller records outcomes)."""
        now = self._clock()
        with self._lock:
            ready = [e for e in self._entries.values() if e.state == "pending" and e.next_at <= now]
        return [msgspec.structs.replace(e) for e in sorted(ready, key=lambda e: e.next_at)]

    def seconds_to_next(self) -> float | None:
        with self._lock:
            times = [e.next_at for e in self._entries.values() if e.state == "pending"]
        return max(0.0, min(times) - self._clock()) if times else None

    def record(self, entry: Delivery) -> None:
        """Keep an attempt's outcome (written before the next attempt of anything)."""
        with self._lock:
            if entry.job_id not in self._entries:
                return
            self._entries[entry.job_id] = entry
        self._write(entry)

    def pending(self) -> int:
        with self._lock:
            return sum(e.state == "pending" for e in self._entries.values())

    def sweep(self) -> None:
        """Forget settled deliveries whose job's results have expired (pending ones stay until settled)."""
        cutoff = self._clock() - self.ttl_seconds
        with self._lock:
            gone = [job_id for job_id, e in self._entries.items() if e.state != "pending" and e.ended_at < cutoff]
            for job_id in gone:
                del self._entries[job_id]
        for job_id in gone:
            if self.folder is not None:
                try:
                    (self.folder / f"{job_id}.json").unlink(missing_ok=True)
                except OSError as exc:
                    log.warning("webhook entry %s could not be removed: %s", job_id, exc)

    def _write(self, entry: Delivery) -> None:
        if self.folder is None:
            return
        try:
            atomic_write(self.folder / f"{entry.job_id}.json", msgspec.json.encode(entry))
        except OSError as exc:
            log.error("webhook for job %s kept in memory only (a restart would lose it): %s", entry.job_id, exc)
