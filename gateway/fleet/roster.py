"""Which model servers a gateway process has, and which of them answer: discovery, the heartbeat,
liveness.

A heartbeat thread per process (started at its first use, so after gunicorn's fork) pings every
server each second: the existing Ping/Pong, with its state, queue and running job. A server whose
ping fails leaves placement at once; after ``timeout`` seconds without an answer it is declared
dead; its first answer brings it back. What a death, a return or an answer means for jobs is the
fleet's business: the roster tells it (``Listener``).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Callable, Protocol

from gateway.fleet.discovery import Discovery
from gateway.model_client import ModelClient, ModelServerUnavailable, RemoteError, ServerView
from protocol.messages import JobView, ModelState, Pong

log = logging.getLogger(__name__)
BEAT_SECONDS = 1.0


class Member:
    """One model server as this process sees it."""

    def __init__(self, address: str, client: ModelClient):
        self.address, self.client = address, client
        self.pong: Pong | None = None
        self.last_seen: float | None = None  # monotonic time of the last answer
        self.failing = True  # its latest ping failed (or none answered yet): no placement
        self.failed_at = 0.0  # monotonic time of the first failed ping since it last answered
        self.dead = False  # no answer for `timeout` seconds: its queued jobs were placed again
        self.queued = 0  # its queue's length, from its latest Pong or Accepted (which counts other gateways' jobs)
        self.inflight = 0  # placements of this process sent here and not answered yet
        self.started = False  # a job of ours started there since its latest Pong, which could not say so
        # Its unfinished jobs and their owners at the latest heartbeat: what it had when it is lost.
        self.listing: tuple[list[JobView], list[str]] = ([], [])

    def answered(self, pong: Pong) -> None:
        self.pong, self.queued, self.started = pong, pong.queue_depth, False

    def accepted(self, view: JobView) -> None:
        """A placement's answer is the freshest word on the queue's length: our job's place in it, or none
        if an idle server's worker took it before answering (then it runs there: counted idle until the next
        heartbeat, every placement meanwhile would go there)."""
        self.queued = max(self.queued, view.queue_position or 0)
        self.started = self.started or view.queue_position is None

    @property
    def ready(self) -> bool:
        return not self.failing and self.pong is not None and self.pong.model_state is ModelState.READY

    @property
    def work(self) -> int:
        running = self.started or (self.pong is not None and self.pong.running_job is not None)
        return self.queued + running + self.inflight

    def view(self, now: float) -> ServerView:
        since = None if self.last_seen is None else round(now - self.last_seen, 1)
        return ServerView(self.address, self.pong, not self.failing, since)


class Listener(Protocol):
    """What the roster tells its fleet."""

    def server_lost(self, member: Member) -> None: ...

    def server_back(self, member: Member) -> None: ...

    def server_restarted(self, member: Member, old_server_id: str) -> None: ...

    def server_answered(self, member: Member) -> None: ...


class Roster:
    """The model servers of this process: members by address, kept current (see the module)."""

    def __init__(self, discovery: Discovery, new_client: Callable[[str], ModelClient], listener: Listener,
                 timeout: float = 5.0, discovery_seconds: float = 5.0):
        self.discovery, self.timeout, self.discovery_seconds = discovery, timeout, discovery_seconds
        self._new_client, self._listener = new_client, listener
        self._lock = threading.Lock()
        self._starting = threading.RLock()  # the first round of a new process may place jobs (re-entrant)
        self._members: dict[str, Member] = {}
        self._server_ids: dict[str, str] = {}  # server_id -> address, for the servers seen alive
        self._gone_ids: set[str] = set()  # server_ids of servers declared dead: their jobs are lost, not unknown
        self._pid = None
        self._stop = threading.Event()
        self._beating: threading.Thread | None = None
        self._next_discovery = 0.0
        self._sync(discovery.addresses())

    def members(self) -> list[Member]:
        """The members, with the heartbeat running in this process (started after a fork)."""
        if self._pid != os.getpid():
            with self._starting:
                if self._pid != os.getpid():
                    self._pid = os.getpid()
                    self._round()  # the first request of a new worker sees the servers as they are
                    self._beating = threading.Thread(target=self._heartbeat, name="fleet-heartbeat", daemon=True)
                    self._beating.start()
        with self._lock:
            return list(self._members.values())

    def get(self, address: str | None) -> Member | None:
        with self._lock:
            return self._members.get(address) if address else None

    def address_of(self, server_id: str) -> str | None:
        return self._server_ids.get(server_id)

    def gone(self, server_id: str) -> bool:
        """A server declared dead had this id: its jobs are lost, not unknown."""
        return server_id in self._gone_ids

    def close(self) -> None:
        self._stop.set()
        if self._beating is not None and self._beating is not threading.current_thread():
            self._beating.join(5)

    # --- keeping it current ----------------------------------------------------------------

    def _sync(self, addresses: list[str]) -> None:
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

    def _heartbeat(self) -> None:
        while not self._stop.wait(BEAT_SECONDS):
            try:
                self._round()
            except Exception:  # the heartbeat must outlive any one bad round
                log.exception("model server heartbeat failed")

    def _round(self) -> None:
        if self.discovery.dynamic and time.monotonic() >= self._next_discovery:
            self._next_discovery = time.monotonic() + self.discovery_seconds
            self._sync(self.discovery.addresses())
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
        # Another process answers at that address: the old one died (restarted within the timeout,
        # or after it was declared dead), and what it held is lost, or queued again by the new one.
        restarted = previous is not None and bool(previous.server_id) and pong.server_id != previous.server_id
        if restarted:
            if not member.failing:  # it died between two beats: after its last answer
                member.failed_at = member.last_seen or now
            self._gone_ids.add(previous.server_id)
        member.answered(pong)
        member.last_seen, member.failing = now, False
        if pong.server_id:
            self._server_ids[pong.server_id] = member.address
            self._gone_ids.discard(pong.server_id)
        if restarted:
            member.dead = False
            log.info("model server %s answers again, restarted (server id %s, was %s)", member.address,
                     pong.server_id, previous.server_id)
            self._listener.server_restarted(member, previous.server_id)
        elif member.dead:
            member.dead = False
            log.info("model server %s answers again", member.address)
            self._listener.server_back(member)
        self._listener.server_answered(member)

    def _declare_dead(self, member: Member) -> None:
        if not member.failing:
            member.failed_at = time.monotonic()
        member.dead, member.failing = True, True
        if member.pong is not None and member.pong.server_id:
            self._gone_ids.add(member.pong.server_id)
        self._listener.server_lost(member)
