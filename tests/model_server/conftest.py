"""The model server's tests run real servers in threads (tests.helpers.servers)."""

from __future__ import annotations

import pytest

from tests.helpers.servers import server_starter


@pytest.fixture
def start_server(tmp_path):
    with server_starter(tmp_path) as start:
        yield start
