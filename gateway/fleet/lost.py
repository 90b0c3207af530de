"""What a gateway process knows of the jobs of model servers it lost, so that every one of them ends.

The heartbeat lists each server's unfinished jobs, with their owners, every second. When a server
is lost, its jobs that were not placed again are remembered here from that last listing:

- **lost**: it was running, or may have started. For ``MODEL_SERVER_LOST_SECONDS`` after its server
  was first seen failing it answers the retryable 503 ``model_server_lost`` (the server may come
  back); then it ends ``failed`` with that error, in every view, and stays so. A server that came
  back as a new process (restarted) ends them at once: its own disk says the same.
- **orphan**: it cannot have started, and no server could take it yet (a lone server, restarting).
  It answers as queued, and is placed under its id on the first ready server that is not the
  process it was lost with; if none is within the bound, it ends as lost does.

Ownership holds here as on the servers: another client's job is "not found". Bounded in size; the
oldest are forgotten first.
"""

from __future__ import annotations

import dataclasses
import threading
import time

import msgspec

from gateway.model_client import ModelServerUnavailable, RemoteError
from protocol.errors import ErrorCode
from protocol.messages import ErrorInfo, JobState, JobView, ProgressInfo, Submit

_KEPT = 10_000


@dataclasses.dataclass
class Lost:
    view: JobView
    owner: str
    server_id: str
    since: float  # monotonic: its server was first seen failing
    submit: Submit | None = None  # an orphan's, to place again
    address: str = ""  # an orphan's lost server's address
    ended: bool = False  # declared failed (past the bound, or its server restarted): final
    restarted: bool = False  # ended because its server came back as a new process


def lost_error(job_id: str, seconds: float | None) -> ErrorInfo:
    why = "its model server restarted" if seconds is None else f"its model server did not answer for {seconds:.0f} s"
    return ErrorInfo(code=ErrorCode.MODEL_SERVER_LOST, message=f"job {job_id} was lost: {why}", retryable=True,
                     retry_after=5.0, hint="Submit the job again; another model server (or this one, restarted) "
                                           "will run it.")


class LostJobs:
    """The lost and orphaned jobs of this process's lost servers (thread-safe; see the module)."""

    def __init__(self, bound_seconds: float):
        self.bound = bound_seconds
        self._lock = threading.Lock()
        self._jobs: dict[str, Lost] = {}

    def remember(self, view: JobView, owner: str, server_id: str, since: float, submit: Submit | None = None,
                 address: str = "") -> None:
        with self._lock:
            if view.job_id not in self._jobs:
                self._jobs[view.job_id] = Lost(view, owner, server_id, since, submit, address)
            while len(self._jobs) > _KEPT:
                del self._jobs[next(iter(self._jobs))]

    def orphan(self, job_id: str, submit: Submit, server_id: str, address: str) -> None:
        view = JobView(job_id=job_id, state=JobState.QUEUED, created_at=time.time(), params=submit.params,
                       progress=ProgressInfo(detail="waiting for a model server: its own was lost before it ran"))
        with self._lock:
            self._jobs.pop(job_id, None)  # an orphan, not (as it may have been) lost
        self.remember(view, submit.client_id, server_id, time.monotonic(), submit, address)

    def orphans(self) -> list[tuple[str, Submit, str, str]]:
        """(job id, Submit, the server_id it was lost with, its address) of every orphan still waiting."""
        with self._lock:
            return [(j, e.submit, e.server_id, e.address) for j, e in self._jobs.items()
                    if e.submit is not None and not e.ended]

    def keep_waiting(self, answering: list) -> None:
        """While some model server answers (even one still loading), orphans wait for it: their bound
        counts from when none does."""
        if not answering:
            return
        now = time.monotonic()
        with self._lock:
            for entry in self._jobs.values():
                if entry.submit is not None and not entry.ended:
                    entry.since = now

    def cancel(self, job_id: str, client_id: str) -> JobView | None:
        """A client's cancel of an orphan: it ends cancelled here, never placed (None: not an orphan)."""
        entry = self._visible(job_id, client_id)
        if entry is None or entry.submit is None or entry.ended:
            return None
        with self._lock:
            entry.submit, entry.ended = None, True
            entry.view = msgspec.structs.replace(
                entry.view, state=JobState.CANCELLED, finished_at=time.time(), cancel_requested=True,
                error=ErrorInfo(code=ErrorCode.CANCELLED, message="the job was cancelled",
                                hint="Submit it again if needed."))
            return entry.view

    def forget(self, job_id: str) -> None:
        with self._lock:
            self._jobs.pop(job_id, None)

    def placed(self, job_id: str) -> None:
        with self._lock:
            self._jobs.pop(job_id, None)

    def restarted(self, server_id: str, still_there: set[str]) -> None:
        """The server that had ``server_id`` is back as a new process: what it does not list as queued
        again is over (its record says lost too), at once; what it lists, it answers for."""
        with self._lock:
            for job_id, entry in list(self._jobs.items()):
                if entry.server_id != server_id or entry.submit is not None:
                    continue
                if job_id in still_there:
                    del self._jobs[job_id]
                else:
                    entry.ended = entry.restarted = True

    def back(self, server_id: str) -> list[str]:
        """The same process answers again: its jobs not yet ended are its own to answer for again;
        returns those already declared failed (they stay so here, and are to be cancelled there)."""
        with self._lock:
            for job_id, entry in list(self._jobs.items()):
                if entry.server_id == server_id and entry.submit is None and not entry.ended:
                    del self._jobs[job_id]
            return [j for j, e in self._jobs.items() if e.server_id == server_id and e.ended]

    def orphan_view(self, job_id: str, client_id: str) -> JobView | None:
        entry = self._visible(job_id, client_id)
        if entry is None or entry.submit is None or entry.ended:
            return None
        if time.monotonic() - entry.since >= self.bound:
            return None  # over: ended() says so
        return entry.view

    def knows(self, job_id: str) -> bool:
        return job_id in self._jobs

    def ended(self, job_id: str, client_id: str) -> JobView | None:
        """The job's final view if it is lost for good (past the bound, or its server restarted)."""
        entry = self._visible(job_id, client_id)
        if entry is None:
            return None
        with self._lock:
            if not entry.ended and time.monotonic() - entry.since >= self.bound:
                entry.ended = True
            if not entry.ended:
                return None
            return self._final(job_id, entry)

    def waiting(self, job_id: str, client_id: str) -> None:
        """For a lost job within the bound, raise the retryable 503 saying when it ends."""
        entry = self._visible(job_id, client_id)
        if entry is None:
            return
        left = self.bound - (time.monotonic() - entry.since)
        error = ModelServerUnavailable(f"the model server that had job {job_id} is not answering; the job ends "
                                       f"failed in {max(left, 0):.0f} s unless it answers again")
        error.error = msgspec.structs.replace(error.error, retry_after=max(1.0, min(left, 5.0)))
        raise error

    def _visible(self, job_id: str, client_id: str) -> Lost | None:
        with self._lock:
            entry = self._jobs.get(job_id)
        if entry is not None and client_id and entry.owner != client_id:
            raise RemoteError(ErrorInfo(code=ErrorCode.NOT_FOUND, message=f"no job with id {job_id[:64]!r}",
                                        hint="Job ids are as POST /v1/jobs returned them."))
        return entry

    def _final(self, job_id: str, entry: Lost) -> JobView:
        if entry.view.state.terminal:
            return entry.view
        seconds = None if entry.restarted else self.bound
        entry.view = msgspec.structs.replace(
            entry.view, state=JobState.FAILED, finished_at=time.time(), queue_position=None,
            error=lost_error(job_id, seconds), cancel_requested=False,
            progress=msgspec.structs.replace(entry.view.progress or ProgressInfo(), eta_seconds=0.0, detail=""))
        entry.submit = None
        return entry.view
