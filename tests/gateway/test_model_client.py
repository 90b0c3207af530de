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
