"""What a gateway process answers for the jobs of a model server it lost (gateway/fleet/lost.py and
ledger.py): which queued jobs are known not to have started, the bound after which a lost job ends
failed, orphans, and ownership. Unit tests over the real classes; tests/operations/test_scale_out.py
and test_run_script.py kill real processes."""

from __future__ import annotations

import time

import pytest

from gateway.fleet.ledger import Ledger
from gateway.fleet.lost import LostJobs
from gateway.model_client import ModelServerUnavailable, RemoteError
from protocol.errors import ErrorCode
from protocol.messages import JobState, JobView, ProgressInfo, Submit
from tests.helpers.servers import params


def view(job_id: str, state: JobState, eta: float | None) -> JobView:
    return JobView(job_id=job_id, state=state, created_at=1.0, params=params(),
                   progress=ProgressInfo(eta_seconds=eta))


def test_a_queued_job_is_known_not_started_until_the_job_ahead_of_it_was_due_to_end():
    ledger = Ledger()
    for job_id in ("first", "second", "third"):
        ledger.add(job_id, "a", Submit(params=params()))
    listed_at = time.monotonic() + 0.001
    # Running: 1 s left. Queued: "first" done in 3 s, "second" in 5 s (so it starts at 3 s), "third" unknown.
    ledger.listed("a", [view("running", JobState.RUNNING, 1.0), view("first", JobState.QUEUED, 3.0),
                        view("second", JobState.QUEUED, 5.0), view("third", JobState.QUEUED, None)], listed_at)
    # The server is seen failing 1.5 s after the listing: "first" may have started (the running job was
    # due at 1 s); "second" cannot have (its turn comes at 3 s); "third"'s turn comes at 5 s.
    again, maybe = ledger.take("a", listed_at + 1.5)
    assert [j for j, _ in again] == ["second", "third"] and [j for j, _ in maybe] == ["first"]
    assert all(s.job_id == j for j, s in again + maybe)  # placed again, each keeps its id


def test_a_job_placed_after_the_last_listing_behind_another_waits_for_the_running_one():
    ledger = Ledger()
    listed_at = time.monotonic()
    ledger.listed("a", [view("running", JobState.RUNNING, 10.0)], listed_at)
    ledger.add("late", "a", Submit(params=params()), behind=True)
    ledger.add("alone", "a", Submit(params=params()))  # nothing ahead of it when accepted: may have started
    again, maybe = ledger.take("a", listed_at + 2.0)
    assert [j for j, _ in again] == ["late"] and [j for j, _ in maybe] == ["alone"]


def test_a_lost_job_answers_503_within_the_bound_then_ends_failed_and_stays_its_owners():
    lost = LostJobs(bound_seconds=0.3)
    lost.remember(view("j1", JobState.RUNNING, 4.0), "alice", "feedbeef", time.monotonic())
    assert lost.ended("j1", "alice") is None
    with pytest.raises(ModelServerUnavailable) as waiting:
        lost.waiting("j1", "alice")
    assert waiting.value.error.retryable and "ends failed in" in str(waiting.value)
    with pytest.raises(RemoteError) as other:
        lost.ended("j1", "mallory")
    assert other.value.error.code is ErrorCode.NOT_FOUND  # another client's: as if unknown
    time.sleep(0.35)
    end = lost.ended("j1", "alice")
    assert end.state is JobState.FAILED and end.error.code is ErrorCode.MODEL_SERVER_LOST and end.error.retryable
    assert end.finished_at and lost.ended("j1", "") == end  # an admin sees it too; and it stays so
    assert lost.back("feedbeef") == ["j1"]  # its server answers again: to be cancelled there, still failed here
    assert lost.ended("j1", "alice").state is JobState.FAILED


def test_a_restart_ends_what_the_new_process_does_not_hold_at_once():
    lost = LostJobs(bound_seconds=60)
    for job_id in ("ran", "requeued"):
        lost.remember(view(job_id, JobState.QUEUED, None), "alice", "feedbeef", time.monotonic())
    lost.restarted("feedbeef", still_there={"requeued"})
    assert "restarted" in lost.ended("ran", "alice").error.message
    assert not lost.knows("requeued")  # the new process answers for it


def test_an_orphan_is_shown_queued_waits_while_a_server_answers_and_can_be_cancelled():
    lost = LostJobs(bound_seconds=0.2)
    lost.orphan("o1", Submit(params=params(), client_id="alice", job_id="o1"), "feedbeef", "ipc:///a.sock")
    assert lost.orphan_view("o1", "alice").state is JobState.QUEUED
    assert [o[0] for o in lost.orphans()] == ["o1"]
    time.sleep(0.25)
    lost.keep_waiting(["a server that answers (loading)"])
    assert lost.orphan_view("o1", "alice") is not None and lost.ended("o1", "alice") is None
    cancelled = lost.cancel("o1", "alice")
    assert cancelled.state is JobState.CANCELLED and lost.orphans() == []
    lost.orphan("o2", Submit(params=params(), client_id="alice", job_id="o2"), "feedbeef", "ipc:///a.sock")
    time.sleep(0.25)  # nobody answered: it ends as a lost job does
    assert lost.ended("o2", "alice").state is JobState.FAILED
