"""One real service (tiny model) shared by each client-library compatibility test module."""

from tests.integration.conftest import stack_fixture

stack = stack_fixture(MODEL_SERVER_QUEUE_SIZE=4)
