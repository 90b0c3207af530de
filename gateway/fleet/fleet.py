"""Many model servers behind one ``ModelServerClient``: placement, routing, liveness.

Each gateway process keeps a view of its model servers, refreshed by a heartbeat thread that
pings every one of them each second (the existing Ping/Pong: state, queue, running job). A server
whose ping fails leaves the placement at once; after ``timeout`` seconds without an answer it is
declared dead, and the jobs this process had queued on it are placed again (``ledger``). It comes
back as soon as it answers.

- **Placement**: a new job goes to the ready server with the least work (its queue plus its
  running job, plus what this process placed there since its last Pong), ties in turn.
- **Routing**: a job id begins with its server's ``server_id`` (Pong), so any process of any
  gateway replica finds its server. A job whose server is unknown or gone (from before a restart,
  or placed again elsewhere) is looked for on every live server; if its server is gone and nobody
  has it, the answer is the retryable ``model_server_lost``.
- **One server** (the default) behaves as a plain ``ModelClient``: the same calls, the same errors.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from typing import Callable, Iterator, TypeVar

from gateway.fleet.discovery import Discovery
from gateway.fleet.ledger import Ledger
from gateway.model_client import ModelClient, ModelServerUnavailable, ProcessContext, RemoteError, ServerView
from common.curve import CurveKeys
from protocol.errors import ErrorCode
from protocol.messages import (ErrorInfo, GenerationParams, ImageInfo, JobState, JobView, ModelState, Pong,
                               StopMode, Submit)

log = logging.getLogger(__name__)
T = TypeVar("T")
BEAT_SECONDS = 1.0
# A placement that fails this way may go to the next server: nothing was queued.
_TRY_NEXT = (ErrorCode.QUEUE_FULL, ErrorCode.NOT_READY, ErrorCode.SHUTTING_DOWN)


class Member:
    """One model server as this process sees it."""

    def __init__(self, address: str, client: ModelClient):
        self.address, self.client = address, client
        self.pong: Pong | None = None
        self.last_seen: float | None = None  # monotonic time of the last answer
        self.failing = True  # its latest ping failed (or none answered yet): no placement
        self.failed_at = 0.0  # monotonic time of the first failed ping since it last answered
        self.dead = False  # no answer for `timeout` seconds: its queued jobs were placed again
        self.placed = 0  # jobs placed here since its last Pong

    @property
    def ready(self) -> bool:
        return not self.failing and self.pong is not None and self.pong.model_state is ModelState.READY

    @property
    def work(self) -> int:
        pong = self.pong
        return (pong.queue_depth + (pong.running_job is not None) if pong else 0) + self.placed

    def view(self, now: float) -> ServerView:
        since = None if self.last_seen is None else round(now - self.last_seen, 1)
        return ServerView(self.address, self.pong, not self.failing, since)


class Fleet:
    """The gateway's model servers as one client (see the module)."""

    def __init__(self, discovery: Discovery, timeout: float = 5.0, curve: CurveKeys | None = None,
                 discovery_seconds: float = 5.0, client_factory: Callable[[str], ModelClient] | None = None):
        self.discovery, self.timeout, self.discovery_seconds = discovery, timeout, discovery_seconds
        self._context = ProcessContext()
        self._new_client = client_factory or (lambda address: ModelClient(address, timeout=timeout, curve=curve,
                                                                            shared=self._context))
        self.ledger = Ledger()
        self._lock = threading.Lock()
        self._starting = threading.RLock()  # the first round of a new process may place jobs (re-entrant)
        self._members: dict[str, Member] = {}
        self._server_ids: dict[str, str] = {}  # server_id -> address, for the servers seen alive
        self._gone_ids: set[str] = set()  # server_ids of servers declared dead: their jobs are lost, not unknown
        self._where: dict[str, str] = {}  # job id -> address, for jobs found away from their id's server
        self._turn = itertools.count()
        self._pid = None
        self._stop = threading.Event()
        self._beating: threading.Thread | None = None
        self._next_discovery = 0.0
        self._sync_members(discovery.addresses())

    # --- membership and heartbeat ------------------------------------------------------

    def _sync_members(self, addresses: list[str]) -> None:
        with self._lock:
            for address in addresses:
                if address not in self._members:
                    self._members[address] = Member(address, self._new_client(address))
                    log.info("model server %s joined", address)
            gone = [m for a, m in self._members.items() if a not in addresses]
            for member in gone:
                del self._members[member.address]
        for member in gone:  # no longer discovered (pod deleted, socket removed): as good as dead
            log.info("model server %s is no longer discovered", member.address)
            self._declare_dead(member)  # its client is dropped, not closed: other threads may hold its sockets

    def _members_now(self) -> list[Member]:
        """The members, with the heartbeat running in this process (started after a fork)."""
        if self._pid != os.getpid():
            with self._starting:
                if self._pid != os.getpid():
                    self._pid = os.getpid()
                    self._beat_round()  # the first request of a new worker sees the servers as they are
                    self._beating = threading.Thread(target=self._heartbeat, name="fleet-heartbeat", daemon=True)
                    self._beating.start()
        with self._lock:
            return list(self._members.values())

    def _heartbeat(self) -> None:
        while not self._stop.wait(BEAT_SECONDS):
            try:
                self._beat_round()
            except Exception:  # the heartbeat must outlive any one bad round
                log.exception("model server heartbeat failed")

    def _beat_round(self) -> None:
        if self.discovery.dynamic and time.monotonic() >= self._next_discovery:
            self._next_discovery = time.monotonic() + self.discovery_seconds
            self._sync_members(self.discovery.addresses())
        with self._lock:
            members = list(self._members.values())
        for member in members:
            self._beat(member)

    def _beat(self, member: Member) -> None:
        now = time.monotonic()
        try:
            pong = member.client.ping(timeout=min(2.0, self.timeout))
        except (ModelServerUnavailable, RemoteError):
            if not member.failing:
                member.failed_at = now
            member.failing = True
            if not member.dead and now - (member.last_seen or now) >= self.timeout:
                log.warning("model server %s has not answered for %.0f s: out of the rotation", member.address,
                            now - member.last_seen)
                self._declare_dead(member)
            return
        previous = member.pong
        member.pong, member.last_seen, member.failing, member.placed = pong, now, False, 0
        if pong.server_id:
            self._server_ids[pong.server_id] = member.address
            self._gone_ids.discard(pong.server_id)
        if member.dead:
            member.dead = False
            log.info("model server %s answers again", member.address)
            moved = self.ledger.moved_from(member.address)
            if previous is not None and pong.server_id == previous.server_id:
                self._cancel_moved(member, moved)  # the same process, cut off for a while: never run a job twice
        if member.address in self.ledger.addresses() and pong.model_state is ModelState.STOPPING:
            self._hand_off(member)
        if member.address in self.ledger.addresses():
            listed_at = time.monotonic()
            try:
                unfinished = member.client.unfinished_jobs("")
            except (ModelServerUnavailable, RemoteError):
                return
            self.ledger.listed(member.address, unfinished, listed_at)

    def _declare_dead(self, member: Member) -> None:
        if not member.failing:
            member.failed_at = time.monotonic()
        member.dead, member.failing = True, True
        if member.pong is not None and member.pong.server_id:
            self._gone_ids.add(member.pong.server_id)
        again, maybe_started = self.ledger.take(member.address, member.failed_at)
        for job_id in maybe_started:
            log.warning("job %s was queued on lost model server %s but may have started: not placed again "
                        "(its owner gets the retryable model_server_lost)", job_id, member.address)
        for job_id, submit in again:
            try:
                view, other = self._place(submit, exclude={member.address})
            except (ModelServerUnavailable, RemoteError) as exc:
                log.warning("job %s was queued on lost model server %s and could not be placed again: %s",
                            job_id, member.address, exc)
                continue
            self.ledger.moved(job_id, member.address, other.address, submit)
            self._where[job_id] = other.address
            log.info("job %s was queued on lost model server %s: placed again on %s", job_id, member.address,
                     other.address)

    def _hand_off(self, member: Member) -> None:
        """A stopping server keeps its queued jobs a few seconds: take ours back and place them on
        another ready server, each given back (Release) before it is placed, so none runs twice."""
        if not any(m.ready and m is not member for m in self._members_now()):
            return  # nobody to take them: they end retryable on the stopping server, as on a lone one
        for job_id, submit in self.ledger.take(member.address)[0]:
            try:
                member.client.release(job_id)
            except (ModelServerUnavailable, RemoteError):
                continue  # started after all, or gone with the server: it ends there
            try:
                view, other = self._place(submit, exclude={member.address})
            except (ModelServerUnavailable, RemoteError) as exc:
                log.error("job %s, given back by stopping model server %s, could not be placed again: %s",
                          job_id, member.address, exc)
                continue
            self.ledger.moved(job_id, member.address, other.address, submit)
            with self._lock:
                self._where[job_id] = other.address
            log.info("job %s was queued on stopping model server %s: placed again on %s", job_id, member.address,
                     other.address)

    def _cancel_moved(self, member: Member, moved: list[str]) -> None:
        for job_id in moved:
            try:
                member.client.cancel(job_id)
                log.info("job %s moved away while %s was unreachable: cancelled there", job_id, member.address)
            except (ModelServerUnavailable, RemoteError):
                pass

    def close(self) -> None:
        self._stop.set()
        if self._beating is not None and self._beating is not threading.current_thread():
            self._beating.join(5)
        self._context.destroy()

    # --- placement ---------------------------------------------------------------------

    def _candidates(self, exclude=frozenset()) -> list[Member]:
        members = [m for m in self._members_now() if m.address not in exclude]
        ready = [m for m in members if m.ready]
        if ready:
            least = min(m.work for m in ready)
            tied = [m for m in ready if m.work == least]
            first = tied[next(self._turn) % len(tied)]
            return [first] + sorted((m for m in ready if m is not first), key=lambda m: m.work)
        # None ready: the least-failing one answers for itself (loading, failed, unreachable), as one server would.
        return sorted(members, key=lambda m: (m.dead, m.failing))

    def _place(self, submit: Submit, exclude=frozenset()) -> tuple[JobView, Member]:
        candidates = self._candidates(exclude)
        if not candidates:
            raise ModelServerUnavailable("no model server is known yet; check MODEL_SERVER_ADDRESS", sent=False)
        last: Exception | None = None
        for member in candidates:
            try:
                view = member.client.send_submit(submit)
            except ModelServerUnavailable as exc:
                if exc.sent:  # it may be queued there: never risk running it twice
                    raise
                member.failing, last = True, exc
                continue
            except RemoteError as exc:
                if exc.error.code not in _TRY_NEXT:
                    raise
                last = exc
                continue
            member.placed += 1
            return view, member
        raise last

    def _check_client_cap(self, client_id: str, members: list[Member]) -> None:
        """The per-client queue cap holds across servers (each server checks only its own queue)."""
        cap = max((m.pong.max_queued_per_client for m in members if m.pong), default=0)
        if not cap or not client_id:
            return
        mine = 0
        for member in members:
            if member.failing:
                continue
            try:
                mine += sum(j.state is JobState.QUEUED for j in member.client.unfinished_jobs(client_id))
            except (ModelServerUnavailable, RemoteError):
                continue
        if mine >= cap:
            raise RemoteError(ErrorInfo(
                code=ErrorCode.QUEUE_FULL, message=f"you already have {mine} jobs waiting (the limit per client "
                f"is {cap})", hint="Wait for one of your jobs to start, or cancel one, then submit again.",
                retryable=True, retry_after=5.0))

    # --- routing -----------------------------------------------------------------------

    def _home(self, job_id: str) -> Member | None:
        with self._lock:
            address = self._where.get(job_id) or self._server_ids.get(job_id[:8])
            return self._members.get(address) if address else None

    def _on_job_server(self, job_id: str, call: Callable[[Member], T]) -> T:
        members = self._members_now()
        home = self._home(job_id)
        not_found: RemoteError | None = None
        if home is not None and not home.dead:
            try:
                return call(home)
            except RemoteError as exc:
                # Not there (any more): given back by a stopping server and placed elsewhere, or
                # simply unknown; with one server, that is the answer.
                if exc.error.code is not ErrorCode.NOT_FOUND or len(members) == 1:
                    raise
                not_found = exc
        # Its server is gone (and nobody else has it): lost, not unknown. A live home's "not found" stands.
        lost = home.dead if home is not None else job_id[:8] in self._gone_ids
        unreachable = not members
        for member in sorted(members, key=lambda m: m.failing):
            if member is home or member.dead:
                continue
            try:
                result = call(member)
            except RemoteError as exc:
                if exc.error.code is not ErrorCode.NOT_FOUND:
                    raise
                not_found = exc
                continue
            except ModelServerUnavailable as exc:
                unreachable = exc
                continue
            with self._lock:
                self._where[job_id] = member.address
                if len(self._where) > 100_000:
                    self._where.pop(next(iter(self._where)))
            return result
        if lost or unreachable or not_found is None:
            raise unreachable if isinstance(unreachable, ModelServerUnavailable) else ModelServerUnavailable(
                f"the model server that had job {job_id} is gone")
        raise not_found

    # --- the ModelServerClient interface -------------------------------------------------

    def ping(self, timeout: float | None = None) -> Pong:
        """A live Pong: from the least-busy ready server, else from whichever answers."""
        first: Pong | None = None
        last: Exception | None = None
        for member in self._candidates():
            try:
                pong = member.client.ping(timeout)
            except (ModelServerUnavailable, RemoteError) as exc:
                last = exc
                continue
            if pong.model_state is ModelState.READY:
                return pong
            first = first or pong
        if first is not None:
            return first
        raise last or ModelServerUnavailable("no model server is known yet; check MODEL_SERVER_ADDRESS")

    def servers(self, timeout: float | None = None) -> list[ServerView]:
        """Every server, pinged now (a dead one is shown as last seen, without waiting for it)."""
        views = []
        for member in self._members_now():
            if member.dead:
                views.append(member.view(time.monotonic()))
                continue
            try:
                pong = member.client.ping(timeout)
            except (ModelServerUnavailable, RemoteError) as exc:
                view = member.view(time.monotonic())
                view.alive, view.error = False, str(exc)
                views.append(view)
                continue
            views.append(ServerView(member.address, pong, True, 0.0))
        return views

    def submit(self, params: GenerationParams, client_id: str = "", request_id: str = "",
               init_image: bytes = b"", mask: bytes = b"", mask_from: str = "luminance") -> JobView:
        submit = Submit(params=params, client_id=client_id, request_id=request_id, init_image=init_image,
                        mask=mask, mask_from=mask_from)
        members = self._members_now()
        if len(members) > 1:
            self._check_client_cap(client_id, members)
        view, member = self._place(submit)
        if len(members) > 1:
            self.ledger.add(view.job_id, member.address, submit)
        return view

    def get_job(self, job_id: str, client_id: str = "") -> JobView:
        return self._on_job_server(job_id, lambda m: m.client.get_job(job_id, client_id))

    def cancel(self, job_id: str, mode: StopMode = StopMode.CANCEL, client_id: str = "") -> JobView:
        return self._on_job_server(job_id, lambda m: m.client.cancel(job_id, mode, client_id))

    def delete(self, job_id: str, client_id: str = "") -> JobView:
        return self._on_job_server(job_id, lambda m: m.client.delete(job_id, client_id))

    def unfinished_jobs(self, client_id: str = "") -> list[JobView]:
        """The client's running jobs, then its queued ones, oldest first, over every live server."""
        jobs: list[JobView] = []
        members = [m for m in self._members_now() if not m.dead]
        for member in members:
            try:
                jobs += member.client.unfinished_jobs(client_id)
            except ModelServerUnavailable:
                if len(members) == 1:
                    raise
        return sorted(jobs, key=lambda j: (j.state is not JobState.RUNNING, j.created_at))

    def fetch(self, job_id: str, index: int = 0, client_id: str = "") -> tuple[ImageInfo, bytes]:
        return self._on_job_server(job_id, lambda m: m.client.fetch(job_id, index, client_id))

    def fetch_preview(self, job_id: str, client_id: str = "") -> tuple[ImageInfo, bytes]:
        return self._on_job_server(job_id, lambda m: m.client.fetch_preview(job_id, client_id))

    def watch(self, job_id: str, client_id: str = "") -> Iterator:
        """The job's events from its server; if that server is lost while the job is still queued
        and it is placed again elsewhere, the events go on from there."""
        while True:
            member = self._on_job_server(job_id, lambda m: (m.client.get_job(job_id, client_id), m))[1]
            stream = member.client.watch(job_id, client_id)
            try:
                yield from stream
                return
            except (ModelServerUnavailable, RemoteError) as exc:
                # Its server died or gave it back while it waited: it may go on elsewhere.
                moved = isinstance(exc, ModelServerUnavailable) or exc.error.code is ErrorCode.NOT_FOUND
                if not moved or not self._placed_again(job_id, client_id, member):
                    raise
            finally:
                stream.close()

    def _placed_again(self, job_id: str, client_id: str, lost: Member) -> bool:
        """Wait (a little longer than it takes to declare a server dead) for the job to turn up on
        another server; False if it does not (it was running, or nobody could take it)."""
        if len(self._members_now()) < 2:
            return False
        deadline = time.monotonic() + self.timeout + 2 * BEAT_SECONDS + 2.0
        while time.monotonic() < deadline:
            time.sleep(0.5)
            for member in self._members_now():
                if member is lost or member.failing:
                    continue
                try:
                    member.client.get_job(job_id, client_id)
                except (ModelServerUnavailable, RemoteError):
                    continue
                with self._lock:
                    self._where[job_id] = member.address
                return True
        return False
