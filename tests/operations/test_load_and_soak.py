"""The bounded load test and the soak, on the real processes with the tiny diffusers model."""

from __future__ import annotations

import pytest

from bench import load_test, soak
from tests.integration.conftest import start_stack, stop_stack

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_stack(log_dir, tiny_model_dir):
    stack = start_stack(log_dir, tiny_model_dir, MODEL_SERVER_QUEUE_SIZE=16, MAX_QUEUED_PER_CLIENT=0)
    yield stack
    stop_stack(stack)


def test_under_a_burst_of_clients_nothing_is_lost_or_hung_and_liveness_stays_fast(tiny_stack):
    result = load_test.run(tiny_stack.url, clients=16, seconds=12)
    print({k: result[k] for k in ("requests", "statuses", "timeouts", "jobs_accepted")}, result["latency"]["live"])
    assert result["requests"] > 200 and result["jobs_accepted"] > 0
    assert result["unexpected_statuses"] == {} and result["timeouts"] == 0 and result["jobs_lost"] == []
    assert result["latency"]["live"]["p99_ms"] < 250


def test_memory_stays_flat_over_100_sequential_generations(tiny_stack):
    result = soak.run(tiny_stack.url, count=100, size=128, steps=2)
    print({k: v for k, v in result.items() if k != "rss_mib_after_each"})
    assert result["growth_after_warmup_mib"] < 48
