"""One real service (tiny model) shared by the client-library compatibility tests."""

from __future__ import annotations

import pytest

from tests.integration.conftest import start_stack, stop_stack


@pytest.fixture(scope="module")
def stack(log_dir, tiny_model_dir):
    stack = start_stack(log_dir, tiny_model_dir, MODEL_SERVER_QUEUE_SIZE=4)
    yield stack
    stop_stack(stack)
    assert "Traceback" not in stack.gateway.log()
