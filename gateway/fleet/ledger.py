"""The jobs this gateway process placed that have not started yet, kept so they can be placed
again if their model server dies before running them.

A model server holds its queue in memory, so when it dies its queued jobs die with it, though none
of them has run. The gateway that submitted a job still has its Submit (params and uploads), so it
keeps it here until the job starts: the heartbeat lists each server's unfinished jobs each second
and drops every entry no longer queued there. When a server is declared dead, its entries are
placed again on live servers under the same id, so their owners' links and waits carry on.

A job runs at most once. The last listing is up to a second old when the server dies, and a job
queued then may have started since; so a job is placed again only if the server was seen failing
before the job could have started: before the job ahead of it in the listing (the running one, or
the queued one before it) was due to finish (75% of its estimate, for safety). The others end as a
running job does (``lost``: the retryable ``model_server_lost``, then failed). A server that stops
gracefully keeps its queued jobs for a few seconds and gives each back on request (``Release``), so
those move without any doubt. Each process places again only what it submitted, so no job is placed
twice; and a job moved away from a server that answers again (cut off, or restarted with its records)
is given back there, or its record deleted, or, if it runs there after all, cancelled.
"""

from __future__ import annotations

import dataclasses
import threading
import time

import msgspec

from protocol.messages import JobState, JobView, Submit

_MOVED_KEPT = 10_000  # ids moved away, remembered to cancel on a server that comes back


_ETA_SHARE = 0.75  # of the running job's estimated time left: the earliest a queued job may start


@dataclasses.dataclass
class Entry:
    address: str
    submit: Submit
    added: float  # monotonic: entries newer than a listing are not judged by it
    # Monotonic time before which the job cannot have started (from the latest listing); a server
    # seen failing before then died with the job unstarted. 0 = not known: never placed again.
    safe_until: float = 0.0
    behind: bool = False  # accepted behind another job: it cannot start before the running one ends


class Ledger:
    """Queued jobs by id, with the server each waits on (thread-safe)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._entries: dict[str, Entry] = {}
        self._moved: dict[str, str] = {}  # job id -> the address it was moved away from
        # address -> before when (monotonic) the job running at its latest listing cannot have ended
        self._running_until: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, job_id: str, address: str, submit: Submit, behind: bool = False) -> None:
        with self._lock:
            self._entries[job_id] = Entry(address, submit, time.monotonic(), behind=behind)

    def addresses(self) -> set[str]:
        with self._lock:
            return {entry.address for entry in self._entries.values()}

    def listed(self, address: str, unfinished: list[JobView], listed_at: float) -> None:
        """Judge ``address``'s entries by its listing of unfinished jobs (asked for at ``listed_at``):
        drop those no longer queued (started, finished, cancelled), and note until when the rest
        cannot have started."""
        # A queued job starts when the job ahead of it ends: each one's ETA is when it is done.
        safe: dict[str, float] = {}
        ahead: float | None = None
        for view in unfinished:  # the running job first, then the queue in order
            if view.state is JobState.QUEUED:
                safe[view.job_id] = listed_at + _ETA_SHARE * ahead if ahead else 0.0
            ahead = view.progress.eta_seconds if view.progress else None
        running = next((v for v in unfinished if v.state is JobState.RUNNING), None)
        eta = running.progress.eta_seconds if running is not None and running.progress else None
        with self._lock:
            self._running_until[address] = listed_at + _ETA_SHARE * eta if eta else 0.0
            for job_id, entry in list(self._entries.items()):
                if entry.address != address or entry.added >= listed_at:
                    continue
                if job_id in safe:
                    entry.safe_until = safe[job_id]
                else:
                    del self._entries[job_id]

    def take(self, address: str, failed_at: float | None = None) -> tuple[list[tuple[str, Submit]],
                                                                          list[tuple[str, Submit]]]:
        """Remove the jobs waiting on ``address``: if it died (first seen failing at ``failed_at``),
        those that cannot have started, oldest first, to place again, and the others; if it is
        stopping (None), all of them (each is given back before it is placed again)."""
        failed_at = float("-inf") if failed_at is None else failed_at
        with self._lock:
            mine = sorted(((j, e) for j, e in self._entries.items() if e.address == address),
                          key=lambda item: item[1].added)
            for job_id, entry in mine:
                del self._entries[job_id]
                if entry.behind and not entry.safe_until:  # placed after the latest listing, behind a job
                    entry.safe_until = self._running_until.get(address, 0.0)
        # Each Submit carries its id from now on: placed again, it keeps it.
        again = [(j, msgspec.structs.replace(e.submit, job_id=j)) for j, e in mine if failed_at <= e.safe_until]
        return again, [(j, msgspec.structs.replace(e.submit, job_id=j)) for j, e in mine if failed_at > e.safe_until]

    def moved(self, job_id: str, old: str, new: str, submit: Submit) -> None:
        with self._lock:
            self._entries[job_id] = Entry(new, submit, time.monotonic())  # judged by the new server's listing
            self._moved[job_id] = old
            while len(self._moved) > _MOVED_KEPT:
                del self._moved[next(iter(self._moved))]

    def moved_from(self, address: str) -> list[str]:
        """The jobs moved away from ``address`` (forgotten once asked: they are cancelled there)."""
        with self._lock:
            ids = [j for j, old in self._moved.items() if old == address]
            for job_id in ids:
                del self._moved[job_id]
        return ids
