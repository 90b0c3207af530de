"""The gateway's ZMQ client when the model server vanishes at the worst moment."""

from __future__ import annotations

import pytest
import zmq

from gateway.model_client import ModelClient, ModelServerUnavailable
from protocol.messages import Ping


class _PeerGoneAfterPoll:
    """A DEALER whose peer disconnects between poll(POLLOUT) and the send, as when the model
    server is killed under load: the poll says writable, then the NOBLOCK send has no pipe left."""

    closed = False

    def poll(self, timeout, flags):
        return flags

    def send_multipart(self, frames, flags=0):
        raise zmq.Again()

    def close(self, linger=None):
        self.closed = True


def test_a_send_that_loses_the_peer_is_an_outage_not_a_gateway_error(monkeypatch):
    client = ModelClient("tcp://127.0.0.1:1")
    stub = _PeerGoneAfterPoll()
    monkeypatch.setattr(client, "_socket", lambda: client._local.__dict__.setdefault("socket", stub))
    with pytest.raises(ModelServerUnavailable) as caught:
        client.ping()
    assert caught.value.error.retryable and "lost the model server" in caught.value.error.message
    assert stub.closed and client._local.socket is None  # the next request starts on a fresh socket


def test_a_peer_that_says_working_forever_is_given_up_on(tmp_path):
    """Working extends a request's deadline (uploads waiting to be decoded), but only so far: a hostile or
    stuck peer cannot hold a gateway thread."""
    import threading
    import time

    from protocol import codec
    from protocol.messages import Working

    ctx = zmq.Context.instance()
    router = ctx.socket(zmq.ROUTER)
    address = f"ipc://{tmp_path}/working.sock"
    router.bind(address)
    stop = threading.Event()

    def peer():
        waiting = []
        while not stop.is_set():
            if router.poll(50):
                frames = router.recv_multipart()
                envelope, _ = codec.decode(frames[1:])
                waiting.append((frames[0], envelope.ref))
            for identity, ref in waiting:
                router.send_multipart([identity, *codec.encode(Working(), ref)])

    thread = threading.Thread(target=peer, daemon=True)
    thread.start()
    client = ModelClient(address, timeout=0.3, working_limit=1.0)
    started = time.monotonic()
    try:
        with pytest.raises(ModelServerUnavailable):
            client.ping()
        assert 1.0 <= time.monotonic() - started < 2.0  # kept alive past 0.3 s, never past the limit
    finally:
        stop.set()
        thread.join(2)
        client.close()
        router.close(linger=0)
