"""The job table: states, queue bounds and positions, cancellation, expiry."""

from __future__ import annotations

import pytest

from model_server.errors import Rejection
from model_server.jobs.table import JobTable
from protocol.errors import ErrorCode
from protocol.messages import ErrorInfo, GenerationParams, ImageInfo, JobState


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def params(**kw):
    return GenerationParams(prompt="a cat", seed=1, steps=10, **kw)


def image(size: int) -> tuple[ImageInfo, bytes]:
    return ImageInfo(index=0, seed=1, media_type="image/png", width=8, height=8, size_bytes=size), b"x" * size


def test_jobs_run_in_fifo_order_and_report_queue_positions():
    table = JobTable(capacity=3, ttl_seconds=60, budget_bytes=10**6)
    a, b, c = (table.submit(params()) for _ in range(3))
    assert [table.view(j).queue_position for j in (a, b, c)] == [1, 2, 3]
    assert table.next_job(0) is a
    assert table.view(a).state is JobState.RUNNING
    assert table.view(a).queue_position is None
    assert [table.view(j).queue_position for j in (b, c)] == [1, 2]


def test_a_full_queue_rejects_with_a_retryable_error():
    table = JobTable(capacity=1, ttl_seconds=60, budget_bytes=10**6)
    table.submit(params())
    with pytest.raises(Rejection) as info:
        table.submit(params())
    assert info.value.error.code is ErrorCode.QUEUE_FULL
    assert info.value.error.retryable and info.value.error.retry_after >= 1


def test_cancelling_a_queued_job_removes_it_at_once():
    table = JobTable(capacity=3, ttl_seconds=60, budget_bytes=10**6)
    a, b = table.submit(params()), table.submit(params())
    table.cancel(a.id)
    assert table.view(a).state is JobState.CANCELLED
    assert table.view(b).queue_position == 1
    assert table.next_job(0) is b


def test_cancelling_a_running_job_only_flags_it_until_the_worker_stops():
    table = JobTable(capacity=3, ttl_seconds=60, budget_bytes=10**6)
    job = table.submit(params())
    table.next_job(0)
    table.cancel(job.id)
    assert job.state is JobState.RUNNING and job.cancel_requested
    table.mark_cancelled(job)
    assert table.view(job).state is JobState.CANCELLED


def test_a_stopped_job_still_says_how_far_it_got_and_a_lone_queued_job_has_a_real_eta():
    table = JobTable(capacity=3, ttl_seconds=60, budget_bytes=10**6)
    first = table.submit(params())
    table.next_job(0)
    table.record_step(first, 0, 3, 2.0)
    table.cancel(first.id)
    table.mark_cancelled(first)
    progress = table.view(first).progress
    assert (progress.step, progress.total_steps, progress.seconds_per_step) == (3, 10, 2.0)
    alone = table.submit(params())  # first in line, nothing running: its ETA is its own 10 steps
    assert table.view(alone).progress.eta_seconds == pytest.approx(20.0)


def test_other_clients_jobs_are_not_found_and_their_tombstones_do_not_say_expired():
    clock = Clock()
    table = JobTable(capacity=3, ttl_seconds=60, budget_bytes=10**6, clock=clock)
    job = table.submit(params(), client_id="key:alice")
    assert table.get(job.id, "key:alice") is job and table.get(job.id) is job  # "" is the operator
    for call in (lambda: table.get(job.id, "key:bob"), lambda: table.cancel(job.id, owner="key:bob"),
                 lambda: table.result(job.id, 0, "key:bob"), lambda: table.preview(job.id, "key:bob")):
        with pytest.raises(Rejection) as caught:
            call()
        assert caught.value.error.code is ErrorCode.NOT_FOUND
    assert table.unfinished("key:bob") == [] and table.unfinished("key:alice") == [job]
    table.cancel(job.id, owner="key:alice")
    clock.now += 61
    table.evict_expired()
    for owner, code in (("key:alice", ErrorCode.EXPIRED), ("key:bob", ErrorCode.NOT_FOUND)):
        with pytest.raises(Rejection) as caught:
            table.get(job.id, owner)
        assert caught.value.error.code is code


def test_progress_gives_seconds_per_step_and_eta_for_running_and_queued_jobs():
    table = JobTable(capacity=3, ttl_seconds=60, budget_bytes=10**6)
    running, queued = table.submit(params()), table.submit(params())
    table.next_job(0)
    table.record_step(running, 0, 4, 2.0)
    view = table.view(running)
    assert (view.progress.step, view.progress.total_steps) == (4, 10)
    assert view.progress.seconds_per_step == 2.0
    assert view.progress.eta_seconds == pytest.approx(12.0)
    # a queued job's ETA is until it is done: the wait (12 s) plus its own 10 steps
    assert table.view(queued).progress.eta_seconds == pytest.approx(32.0)


def test_finished_results_expire_after_the_ttl_and_then_answer_expired():
    clock = Clock()
    table = JobTable(capacity=3, ttl_seconds=60, budget_bytes=10**6, clock=clock)
    job = table.submit(params())
    table.next_job(0)
    table.succeed(job, [image(10)])
    assert table.result(job.id, 0)[1] == b"x" * 10
    clock.now += 61
    table.evict_expired()
    with pytest.raises(Rejection) as info:
        table.get(job.id)
    assert info.value.error.code is ErrorCode.EXPIRED
    with pytest.raises(Rejection) as info:
        table.get("never-existed")
    assert info.value.error.code is ErrorCode.NOT_FOUND


def test_the_byte_budget_evicts_the_oldest_results_first():
    clock = Clock()
    table = JobTable(capacity=5, ttl_seconds=600, budget_bytes=250, clock=clock)
    jobs = []
    for _ in range(3):
        job = table.submit(params())
        table.next_job(0)
        clock.now += 1
        table.succeed(job, [image(100)])
        jobs.append(job)
    with pytest.raises(Rejection):
        table.get(jobs[0].id)
    assert table.result(jobs[1].id, 0) and table.result(jobs[2].id, 0)


def test_shutdown_fails_queued_jobs_and_refuses_new_ones():
    table = JobTable(capacity=3, ttl_seconds=60, budget_bytes=10**6)
    running, queued = table.submit(params()), table.submit(params())
    table.next_job(0)
    table.stop_accepting()
    error = ErrorInfo(code=ErrorCode.SHUTTING_DOWN, message="bye", retryable=True)
    assert table.fail_queued(error) == [queued]
    assert table.view(queued).state is JobState.FAILED
    assert table.view(running).state is JobState.RUNNING
    with pytest.raises(Rejection) as info:
        table.submit(params())
    assert info.value.error.code is ErrorCode.SHUTTING_DOWN


def test_a_terminal_job_never_changes_state_again():
    table = JobTable(capacity=3, ttl_seconds=60, budget_bytes=10**6)
    job = table.submit(params())
    table.next_job(0)
    table.succeed(job, [image(1)])
    table.fail(job, ErrorInfo(code=ErrorCode.PIPELINE_ERROR, message="late"))
    table.cancel(job.id)
    assert table.view(job).state is JobState.SUCCEEDED
