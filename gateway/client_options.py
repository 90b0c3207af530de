"""Each client's AUTOMATIC1111 options: what it wrote with ``POST /sdapi/v1/options`` (the
checkpoint among them; ``a1111_options`` says which keys and what they mean).

A1111 has one global set of options, so one user's ``sd_model_checkpoint`` changes everyone's
images. Here the options belong to the client that wrote them (its API key, or its address), like
its jobs: later A1111 requests from that client follow them, and nobody else's change. It is kept where the
rate limits keep their counters: in Redis when ``RATE_LIMIT_STORAGE`` is ``redis://`` (shared by
every worker and gateway replica, kept 30 days), else in this process (the gateway then runs one
worker). A Redis outage falls back to this process's memory, logged once.
"""

from __future__ import annotations

import collections
import json
import logging
import threading

log = logging.getLogger(__name__)
TTL_SECONDS = 30 * 86400
MAX_LOCAL = 10_000  # clients remembered in memory (the oldest forgotten first)


class ClientOptions:
    """Each client's A1111 options (a dict of the keys it wrote; its checkpoint "" = the server's default)."""

    def __init__(self, storage_uri: str):
        self._redis = None
        if storage_uri.startswith(("redis://", "rediss://", "unix://")):
            import redis

            self._redis = redis.Redis.from_url(storage_uri, socket_timeout=1, socket_connect_timeout=1)
        self._local: collections.OrderedDict[str, dict] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._warned = False

    @staticmethod
    def _key(client_id: str) -> str:
        return f"sdcpu:a1111:options:{client_id}"

    def _redis_failed(self, exc: Exception) -> None:
        if not self._warned:
            log.warning("A1111 options fall back to this process's memory: Redis: %s", exc)
            self._warned = True

    def get(self, client_id: str) -> dict:
        if self._redis is not None:
            try:
                value = self._redis.get(self._key(client_id))
                return _parsed(value)
            except Exception as exc:  # noqa: BLE001  (any client error: fall back, never a 500)
                self._redis_failed(exc)
        with self._lock:
            return dict(self._local.get(client_id, {}))

    def update(self, client_id: str, changes: dict) -> None:
        """Merge ``changes`` (checked values) into the client's options."""
        if self._redis is not None:
            try:
                merged = {**_parsed(self._redis.get(self._key(client_id))), **changes}
                self._redis.set(self._key(client_id), json.dumps(merged).encode("utf-8"), ex=TTL_SECONDS)
                return
            except Exception as exc:  # noqa: BLE001
                self._redis_failed(exc)
        with self._lock:
            self._local[client_id] = {**self._local.get(client_id, {}), **changes}
            self._local.move_to_end(client_id)
            while len(self._local) > MAX_LOCAL:
                self._local.popitem(last=False)


def _parsed(value: bytes | None) -> dict:
    try:
        parsed = json.loads(value) if value else {}
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}
