"""Many model servers behind one ``ModelServerClient``: placement and routing.

Each gateway process keeps a view of its model servers (``roster``: discovery, heartbeat,
liveness). When one is declared dead or stops, the jobs this process had queued there are placed
again (``ledger``).

- **Placement**: a new job goes to the ready server with the least work (its queue plus its
  running job, as its last Pong or placement answer said, plus this process's placements there
  still in flight); among those, one that has the job's model loaded; ties in turn from a random
  start.
- **Routing**: a job id begins with its server's ``server_id`` (Pong), so any process of any
  gateway replica finds its server. A job whose server is unknown or gone (from before a restart,
  or placed again elsewhere) is looked for on every live server; if its server is gone and nobody
  has it, the answer is the retryable ``model_server_lost``, and past MODEL_SERVER_LOST_SECONDS
  the job ends ``failed`` with it (``lost``).
- **One server** (the default) behaves as a plain ``ModelClient``: the same calls, the same errors.
"""

from __future__ import annotations

import itertools
import logging
import random
import threading
import time
from typing import Callable, Iterator, TypeVar

from gateway.fleet.discovery import Discovery
from gateway.fleet.ledger import Ledger
from gateway.fleet.lost import LostJobs
from gateway.fleet.roster import BEAT_SECONDS, Member, Roster
from gateway.model_client import ModelClient, ModelServerUnavailable, ProcessContext, RemoteError, ServerView
from common.curve import CurveKeys
from protocol.errors import ErrorCode
from protocol.messages import (ErrorInfo, Failed, GenerationParams, ImageInfo, JobState, JobView, ModelList,
                               ModelState, Pong, Progress, StopMode, Submit, lost_before_start)

log = logging.getLogger(__name__)
T = TypeVar("T")
# A placement that fails this way may go to the next server: nothing was queued (another server may have room, or
# a larger memory budget).
_TRY_NEXT = (ErrorCode.QUEUE_FULL, ErrorCode.NOT_READY, ErrorCode.SHUTTING_DOWN, ErrorCode.OVER_BUDGET)


class Fleet:
    """The gateway's model servers as one client (see the module)."""

    def __init__(self, discovery: Discovery, timeout: float = 5.0, curve: CurveKeys | None = None,
                 discovery_seconds: float = 5.0, client_factory: Callable[[str], ModelClient] | None = None,
                 lost_seconds: float = 30.0):
        self.timeout = timeout
        self.lost = LostJobs(lost_seconds)
        self._context = ProcessContext()
        self._new_client = client_factory or (lambda address: ModelClient(address, timeout=timeout, curve=curve,
                                                                            shared=self._context))
        self.ledger = Ledger()
        self._lock = threading.Lock()
        self._where: dict[str, str] = {}  # job id -> address, for jobs found away from their id's server
        # Ties go round in turn, from a random start: every gateway process starting at the same
        # server would pile their first jobs onto it.
        self._turn = itertools.count(random.randrange(1 << 16))
        self.roster = Roster(discovery, self._new_client, self, timeout, discovery_seconds)

    # --- what the roster tells ----------------------------------------------------------

    def server_lost(self, member: Member) -> None:
        """Place again what this process had queued there and cannot have started (``ledger``); what
        it had running, or that may have started, is lost (``lost``: it ends within the bound)."""
        server_id = member.pong.server_id if member.pong else ""
        again, maybe_started = self.ledger.take(member.address, member.failed_at)
        placing = {job_id for job_id, _ in again}
        for view, owner in zip(*member.listing):
            if view.job_id not in placing:
                self.lost.remember(view, owner, server_id, member.failed_at)
        for job_id, submit in maybe_started:
            log.warning("job %s was queued on lost model server %s but may have started: not placed again "
                        "(it answers the retryable model_server_lost, then ends failed)", job_id, member.address)
            self.lost.remember(_queued(job_id, submit), submit.client_id, server_id, member.failed_at)
        for job_id, submit in again:
            self._place_again(job_id, submit, member, "lost", server_id)

    def server_restarted(self, member: Member, old_server_id: str) -> None:
        """Another process answers at a lost server's address: what it queued again (from its records)
        it runs; what this process holds for the old one is placed again (there too: it never
        started); the rest of the old one's jobs end now, as its records say."""
        self._forget_moved(member)
        try:
            views, _ = member.client.listing(min(2.0, self.timeout))
        except (ModelServerUnavailable, RemoteError):
            views = []
        there = {view.job_id for view in views}
        again, maybe_started = self.ledger.take(member.address, member.failed_at)
        for job_id, submit in maybe_started:
            if job_id in there:
                self.ledger.add(job_id, member.address, submit)
            elif _never_started(member, job_id):  # its record there says so: certain, unlike a guess
                again.append((job_id, submit))
            else:
                self.lost.remember(_queued(job_id, submit), submit.client_id, old_server_id, member.failed_at)
        for view, owner in zip(*member.listing):  # the old process's, from its last listing
            if view.job_id not in there:
                self.lost.remember(view, owner, old_server_id, member.failed_at)
        self.lost.restarted(old_server_id, there)
        for job_id, submit in again:
            if job_id in there:
                self.ledger.add(job_id, member.address, submit)  # queued again there by the server itself
            else:
                self._place_again(job_id, submit, member, "restarted", old_server_id, elsewhere=False)

    def server_back(self, member: Member) -> None:
        """The same process answers again after it was declared dead (cut off, not restarted): what
        moved away, or was declared lost meanwhile, must not run there too."""
        self._forget_moved(member)
        for job_id in self.lost.back(member.pong.server_id if member.pong else ""):
            try:  # declared failed meanwhile: so it stays
                member.client.cancel(job_id)
            except (ModelServerUnavailable, RemoteError):
                pass

    def server_answered(self, member: Member) -> None:
        """Note its unfinished jobs (what it had, should it be lost), and which of ours still wait
        there; a stopping server: take our queued jobs back; then place orphans that wait for a server."""
        ours = member.address in self.ledger.addresses()
        if ours and member.pong.model_state is ModelState.STOPPING:
            self._hand_off(member)
        listed_at = time.monotonic()
        try:
            member.listing = member.client.listing(min(2.0, self.timeout))
        except (ModelServerUnavailable, RemoteError):
            return
        if ours:
            self.ledger.listed(member.address, member.listing[0], listed_at)
        self._place_orphans()

    def _hand_off(self, member: Member) -> None:
        """A stopping server keeps its queued jobs a few seconds: take ours back and place them on
        another ready server, each given back (Release) before it is placed, so none runs twice."""
        if not any(m.ready and m is not member for m in self.roster.members()):
            return  # nobody to take them: they end retryable on the stopping server, as on a lone one
        for job_id, submit in self.ledger.take(member.address)[0]:
            try:
                member.client.release(job_id)
            except (ModelServerUnavailable, RemoteError):
                continue  # started after all, or gone with the server: it ends there
            self._place_again(job_id, submit, member, "stopping")

    def _place_again(self, job_id: str, submit: Submit, old: Member, why: str, server_id: str = "",
                     elsewhere: bool = True) -> None:
        """Place a job that was queued on ``old`` on another server (or, ``elsewhere`` False, on a new
        process at its address too), under its id; with none ready, it waits as an orphan."""
        try:
            _, other = self._place(submit, exclude={old.address} if elsewhere else frozenset())
        except (ModelServerUnavailable, RemoteError) as exc:
            log.warning("job %s was queued on %s model server %s and waits for another: %s", job_id, why,
                        old.address, exc)
            self.lost.orphan(job_id, submit, server_id, old.address)
            return
        self._moved(job_id, submit, old.address, other)
        log.info("job %s was queued on %s model server %s: placed again on %s", job_id, why, old.address,
                 other.address)

    def _moved(self, job_id: str, submit: Submit, old_address: str, other: Member) -> None:
        if other.address == old_address:  # a new process at the same address: nothing to undo there
            self.ledger.add(job_id, other.address, submit)
        else:
            self.ledger.moved(job_id, old_address, other.address, submit)
        with self._lock:
            self._where[job_id] = other.address

    def _place_orphans(self) -> None:
        """Jobs lost before they ran, waiting for a ready server that is not the process they were
        lost with; while any server answers, they wait for one (a restart's load included)."""
        orphans = self.lost.orphans()
        if not orphans:
            return
        members = self.roster.members()
        self.lost.keep_waiting([m for m in members if not m.failing])
        for job_id, submit, server_id, old_address in orphans:
            stale = {m.address for m in members if m.pong is not None and m.pong.server_id == server_id}
            if not any(m.ready and m.address not in stale for m in members):
                continue
            try:
                _, other = self._place(submit, exclude=stale)
            except (ModelServerUnavailable, RemoteError) as exc:
                log.warning("job %s, lost before it ran, could not be placed yet: %s", job_id, exc)
                continue
            self.lost.placed(job_id)
            self._moved(job_id, submit, old_address, other)
            log.info("job %s, lost before it ran, placed again on %s", job_id, other.address)

    def _forget_moved(self, member: Member) -> None:
        """What moved away from ``member``'s address while it was gone must not run or answer there:
        given back if still queued (a restarted server queues again what its records hold), its
        record deleted if it ended there, cancelled if it runs (a server cut off, not dead)."""
        for job_id in self.ledger.moved_from(member.address):
            for undo in (member.client.release, member.client.delete, member.client.cancel):
                try:
                    undo(job_id)
                    log.info("job %s moved away while %s was gone: %s there", job_id, member.address, undo.__name__)
                    break
                except (ModelServerUnavailable, RemoteError):
                    continue

    def close(self) -> None:
        self.roster.close()
        self._context.destroy()

    # --- placement ---------------------------------------------------------------------

    def _candidates(self, exclude=frozenset()) -> list[Member]:
        """The ready servers, least work first (ties in turn); with none ready, every server, the
        least failing first, so one answers for itself (loading, failed, unreachable) as a lone
        server would."""
        members = [m for m in self.roster.members() if m.address not in exclude]
        with self._lock:
            return self._ranked_locked(members)

    def _ranked_locked(self, members: list[Member], model: str | None = None) -> list[Member]:
        """``model``: the job's (a name, "" the default); among the least busy, a server that has it loaded
        comes first (it saves the job a switch; a busier server with it would only make the job wait): the one it
        runs now, else one that keeps it in memory beside others."""
        ready = [m for m in members if m.ready]
        if not ready:
            return sorted(members, key=lambda m: (m.dead, m.failing))
        least = min(m.work for m in ready)
        tied = [m for m in ready if m.work == least]
        if model is not None:
            loaded = [m for m in tied if m.pong.loaded_model and m.pong.loaded_model == (model or m.pong.default_model)]
            resident = [m for m in tied if m.pong.memory_budget is not None
                        and (model or m.pong.default_model) in m.pong.memory_budget.resident]
            tied = loaded or resident or tied
        first = tied[next(self._turn) % len(tied)]
        return [first] + sorted((m for m in ready if m is not first), key=lambda m: m.work)

    def _place(self, submit: Submit, exclude=frozenset()) -> tuple[JobView, Member]:
        members = [m for m in self.roster.members() if m.address not in exclude]
        if not members:
            raise ModelServerUnavailable("no model server is known yet; check MODEL_SERVER_ADDRESS", sent=False)
        tried: set[str] = set()
        last: Exception | None = None
        while True:
            with self._lock:  # choosing and counting it in flight at once: concurrent requests spread out
                ranked = self._ranked_locked([m for m in members if m.address not in tried], submit.params.model)
                if not ranked:
                    raise last
                member = ranked[0]
                member.inflight += 1
            tried.add(member.address)
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
            finally:
                with self._lock:
                    member.inflight -= 1
            member.accepted(view)
            return view, member

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
            address = self._where.get(job_id)
        return self.roster.get(address or self.roster.address_of(job_id[:8]))

    def _on_job_server(self, job_id: str, call: Callable[[Member], T]) -> T:
        members = self.roster.members()
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
        lost = home.dead if home is not None else self.roster.gone(job_id[:8])
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

    def list_models(self, timeout: float | None = None, answering_only: bool = False) -> ModelList:
        """The models and LoRAs, from the first server that answers (servers share their configuration);
        ``answering_only``: from those that answered their latest heartbeat only."""
        last: Exception | None = None
        members = [m for m in self._candidates() if not (answering_only and m.failing)]
        if answering_only and not members:
            raise ModelServerUnavailable("no model server answered its latest heartbeat")
        for member in members:
            try:
                return member.client.list_models(timeout)
            except (ModelServerUnavailable, RemoteError) as exc:
                last = exc
        raise last or ModelServerUnavailable("no model server is known yet; check MODEL_SERVER_ADDRESS")

    def servers(self, timeout: float | None = None) -> list[ServerView]:
        """Every server, pinged now (a dead one is shown as last seen, without waiting for it)."""
        views = []
        for member in self.roster.members():
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
               init_image: bytes = b"", mask: bytes = b"", mask_from: str = "luminance",
               control_images: tuple[bytes, ...] = (), control_masks: tuple[bytes, ...] = ()) -> JobView:
        submit = Submit(params=params, client_id=client_id, request_id=request_id, init_image=init_image,
                        mask=mask, mask_from=mask_from, control_images=list(control_images),
                        control_masks=list(control_masks))
        members = self.roster.members()
        if len(members) > 1:
            self._check_client_cap(client_id, members)
        view, member = self._place(submit)
        # A lone server's too: it may restart. Accepted behind another job, it cannot start before that one ends.
        self.ledger.add(view.job_id, member.address, submit, behind=bool(view.queue_position))
        return view

    def _job(self, job_id: str, client_id: str, call: Callable[[Member], T],
             lost: Callable[[JobView], T] = lambda view: view) -> T:
        """``call`` on the job's server (or whichever live one has it: placed again elsewhere); for a
        job no live server has and that this process saw on a lost one, ``lost`` on the view it answers
        with (``lost.LostJobs``): its end once it is over, an orphan's wait, else the 503."""
        orphan = self.lost.orphan_view(job_id, client_id)
        if orphan is not None:  # waiting to be placed: its old server's records may say otherwise
            return lost(orphan)
        try:
            return self._on_job_server(job_id, call)
        except (ModelServerUnavailable, RemoteError) as exc:
            return lost(self._lost_end(job_id, client_id, exc))

    def _lost_end(self, job_id: str, client_id: str, exc: Exception) -> JobView:
        """The end of a job no live server has, if it is over; else ``exc`` again (a job this process
        knows as lost within the bound: the retryable 503 saying when it ends)."""
        if (isinstance(exc, RemoteError) and exc.error.code is not ErrorCode.NOT_FOUND) or not self.lost.knows(job_id):
            raise exc
        ended = self.lost.ended(job_id, client_id)
        if ended is not None:
            return ended
        self.lost.waiting(job_id, client_id)
        raise exc

    def get_job(self, job_id: str, client_id: str = "") -> JobView:
        return self._job(job_id, client_id, lambda m: m.client.get_job(job_id, client_id))

    def cancel(self, job_id: str, mode: StopMode = StopMode.CANCEL, client_id: str = "") -> JobView:
        if mode is StopMode.CANCEL:
            cancelled = self.lost.cancel(job_id, client_id)
            if cancelled is not None:
                return cancelled
        return self._job(job_id, client_id, lambda m: m.client.cancel(job_id, mode, client_id))

    def delete(self, job_id: str, client_id: str = "") -> JobView:
        def forget(view: JobView) -> JobView:
            if not view.state.terminal:
                raise RemoteError(ErrorInfo(code=ErrorCode.INVALID_PARAMS, message=f"job {job_id} is not finished",
                                            hint="Cancel it first."))
            self.lost.forget(job_id)
            return view

        return self._job(job_id, client_id, lambda m: m.client.delete(job_id, client_id), forget)

    def unfinished_jobs(self, client_id: str = "") -> list[JobView]:
        """The client's running jobs, then its queued ones, oldest first, over every live server."""
        jobs: list[JobView] = []
        members = [m for m in self.roster.members() if not m.dead]
        for member in members:
            try:
                jobs += member.client.unfinished_jobs(client_id)
            except ModelServerUnavailable:
                if len(members) == 1:
                    raise
        return sorted(jobs, key=lambda j: (j.state is not JobState.RUNNING, j.created_at))

    def _from_live(self, ask) -> list[JobView]:
        """``ask(client)``'s jobs from every live server; one that does not answer adds none (a lost server's
        finished jobs come back with it, or from a peer's outputs folder by id; its labels lead nowhere now)."""
        jobs: list[JobView] = []
        for member in [m for m in self.roster.members() if not m.dead]:
            try:
                jobs += ask(member.client)
            except ModelServerUnavailable:
                pass
        return jobs

    def finished_jobs(self, limit: int, client_id: str = "") -> list[JobView]:
        """The client's ``limit`` most recently finished jobs over every live server, newest first."""
        jobs = self._from_live(lambda client: client.finished_jobs(limit, client_id))
        return sorted(jobs, key=lambda j: j.finished_at or 0.0, reverse=True)[:limit]

    def task_jobs(self, task: str, client_id: str = "") -> list[JobView]:
        """The client's jobs labelled ``task``, over every live server, oldest first."""
        return sorted(self._from_live(lambda client: client.task_jobs(task, client_id)), key=lambda j: j.created_at)

    def fetch(self, job_id: str, index: int = 0, client_id: str = "") -> tuple[ImageInfo, bytes]:
        return self._job(job_id, client_id, lambda m: m.client.fetch(job_id, index, client_id), _no_image)

    def fetch_preview(self, job_id: str, client_id: str = "") -> tuple[ImageInfo, bytes]:
        return self._job(job_id, client_id, lambda m: m.client.fetch_preview(job_id, client_id), _no_image)

    def watch(self, job_id: str, client_id: str = "") -> Iterator:
        """The job's events from its server; if that server is lost while the job is still queued
        and it is placed again elsewhere, the events go on from there. A job lost for good ends
        with Failed; an orphan is shown queued, once a heartbeat, until it is placed."""
        while True:
            orphan = self.lost.orphan_view(job_id, client_id)
            if orphan is not None:
                yield Progress(job=orphan)
                time.sleep(BEAT_SECONDS)
                continue
            try:
                member = self._on_job_server(job_id, lambda m: (m.client.get_job(job_id, client_id), m))[1]
            except (ModelServerUnavailable, RemoteError) as exc:
                yield Failed(job=self._lost_end(job_id, client_id, exc))
                return
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
        if len(self.roster.members()) < 2:
            return False
        deadline = time.monotonic() + self.timeout + 2 * BEAT_SECONDS + 2.0
        while time.monotonic() < deadline:
            time.sleep(0.5)
            for member in self.roster.members():
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


def _queued(job_id: str, submit: Submit) -> JobView:
    """A job this process placed and knows only by its Submit (placed after the server's last listing)."""
    return JobView(job_id=job_id, state=JobState.QUEUED, created_at=time.time(), params=submit.params)


def _no_image(view: JobView):
    raise RemoteError(ErrorInfo(code=ErrorCode.NOT_FOUND, message=f"job {view.job_id} is {view.state.value}; it has "
                                f"no image", hint=view.error.hint if view.error else "Submit the job again."))


def _never_started(member: Member, job_id: str) -> bool:
    """A restarted server's word on a job the crash left queued: waiting for its uploads, or (after
    that wait) lost, before it ever started."""
    try:
        view = member.client.get_job(job_id)
    except (ModelServerUnavailable, RemoteError):
        return False
    return view.awaiting_uploads or lost_before_start(view)
