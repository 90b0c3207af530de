"""Decoding uploaded images off the IO thread.

Decoding and resizing the largest allowed upload takes about a second (a 4096x4096 WebP init
image and mask); on the IO thread that second would hold up every ping, status and cancel, and a
burst of uploads would make the server look dead to every gateway. So the IO thread only checks
a Submit (admission.check) and reserves its queue place, and this thread decodes, one upload at
a time: the transient memory stays that of one decode (tests/operations/test_upload_memory.py),
however many arrive together. The IO thread sends ``Working`` to each waiting sender once per
heartbeat, so a long backlog is not mistaken for a dead server.

Finished submissions go back to the IO thread (the only one that may touch the ROUTER socket)
through ``done`` and a wake-up on an inproc PUSH socket, as the worker's job events do.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
from dataclasses import dataclass

import zmq

from model_server import errors
from model_server.errors import Rejection
from model_server.jobs.admission import decode_images
from model_server.settings import ModelServerSettings
from protocol.messages import JobMemory, Submit

log = logging.getLogger(__name__)
DECODED_ADDRESS = "inproc://decoded-uploads"


@dataclass
class Pending:
    """A checked Submit with a reserved queue place, waiting for its uploads to be decoded."""

    identity: bytes
    ref: int
    msg: Submit
    memory: JobMemory | None = None  # the job's predicted peak (the memory budget's check)
    images: tuple | None = None  # (init image, mask) once decoded
    rejection: Rejection | None = None


class UploadDecoder(threading.Thread):
    """The thread that decodes Submits' uploads in arrival order (see the module)."""

    def __init__(self, settings: ModelServerSettings, ctx: zmq.Context):
        super().__init__(name="model-server-uploads", daemon=True)
        self.settings, self.ctx = settings, ctx
        self.waiting: dict[tuple[bytes, int], Pending] = {}  # the IO thread's view: sent, not yet answered
        self.done: collections.deque[Pending] = collections.deque()
        self._todo: queue.Queue[Pending | None] = queue.Queue()

    def put(self, pending: Pending) -> None:
        """Called on the IO thread."""
        self.waiting[(pending.identity, pending.ref)] = pending
        self._todo.put(pending)

    def finished(self) -> Pending:
        """The next decoded submission, on the IO thread, after a wake-up."""
        pending = self.done.popleft()
        self.waiting.pop((pending.identity, pending.ref), None)
        return pending

    def stop(self) -> None:
        self._todo.put(None)

    def run(self) -> None:
        wake = self.ctx.socket(zmq.PUSH)
        wake.connect(DECODED_ADDRESS)
        try:
            while (pending := self._todo.get()) is not None:
                try:
                    pending.images = decode_images(pending.msg, self.settings)
                except Rejection as exc:
                    pending.rejection = exc
                except Exception:  # a decoder bug must not stop every later upload
                    log.exception("decoding an upload failed")
                    pending.rejection = Rejection(errors.handling_failed("Submit"))
                self.done.append(pending)
                wake.send(b"")
        finally:
            wake.close(linger=0)
