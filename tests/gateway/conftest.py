from __future__ import annotations

import pytest

from gateway import create_app
from gateway.settings import GatewaySettings
from tests.gateway.fake_client import FakeModelClient
from tests.helpers.servers import server_starter


@pytest.fixture
def start_server(tmp_path):
    """A real model server (fake pipeline) in a thread, for the client conformance checks."""
    with server_starter(tmp_path) as start:
        yield start


@pytest.fixture
def fake():
    return FakeModelClient()


@pytest.fixture
def make_client(fake):
    def make(**settings):
        app = create_app(GatewaySettings(**settings), model_client=fake)
        app.testing = True
        return app.test_client()

    return make


@pytest.fixture
def client(make_client):
    return make_client()
