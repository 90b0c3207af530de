"""One set of checks, run against the real ModelClient (talking to a real model server with the
fake pipeline) and against the tests' FakeModelClient, so the fake cannot drift from the real one."""

from __future__ import annotations

import inspect

import msgspec
import pytest

from gateway.fleet import Fleet, discovery
from gateway.model_client import ModelClient, ModelServerClient, RemoteError
from protocol.errors import ErrorCode
from protocol.messages import Completed, GenerationParams, JobState, ModelState, Progress
from tests.gateway.fake_client import FakeModelClient

ALICE, BOB = "key:alice", "key:bob"


@pytest.fixture(params=["real", "fleet", "fake"])
def client(request, start_server):
    if request.param == "fake":
        return FakeModelClient()
    _, real = start_server()
    if request.param == "fleet":  # what the gateway uses: a fleet, here of one server
        fleet = Fleet(discovery(real.address), timeout=3.0)
        request.addfinalizer(fleet.close)
        return fleet
    return real


def params(**kw) -> GenerationParams:
    return GenerationParams(**{"prompt": "a cat", "seed": 7, "steps": 2, "width": 64, "height": 64, **kw})


@pytest.mark.parametrize("implementation", [ModelClient, Fleet, FakeModelClient])
def test_each_has_every_method_of_the_interface_with_its_parameters(implementation):
    for name, method in inspect.getmembers(ModelServerClient, inspect.isfunction):
        if name.startswith("_"):
            continue
        assert hasattr(implementation, name), name
        wanted = list(inspect.signature(method).parameters)
        assert list(inspect.signature(getattr(implementation, name)).parameters) == wanted, name


def test_a_job_runs_to_completion_and_its_image_is_fetched_by_its_owner(client):
    assert client.ping().model_state is ModelState.READY
    job = client.submit(params(), client_id=ALICE, request_id="r1")
    assert job.state is JobState.QUEUED and job.job_id
    events = list(client.watch(job.job_id, ALICE))
    assert all(isinstance(e, Progress) for e in events[:-1]) and isinstance(events[-1], Completed)
    done = client.get_job(job.job_id, ALICE)
    assert done.state is JobState.SUCCEEDED and len(done.images) == 1
    info, data = client.fetch(job.job_id, 0, ALICE)
    assert info.seed == 7 and data


def test_another_clients_job_is_not_found_on_every_call(client):
    job = client.submit(params(), client_id=ALICE)
    calls = [lambda: client.get_job(job.job_id, BOB), lambda: client.cancel(job.job_id, client_id=BOB),
             lambda: client.fetch(job.job_id, 0, BOB), lambda: client.fetch_preview(job.job_id, BOB),
             lambda: client.delete(job.job_id, BOB), lambda: list(client.watch(job.job_id, BOB))]
    for call in calls:
        with pytest.raises(RemoteError) as caught:
            call()
        assert caught.value.error.code is ErrorCode.NOT_FOUND
    assert client.unfinished_jobs(BOB) == []
    assert [j.job_id for j in client.unfinished_jobs(ALICE)] in ([job.job_id], [])  # it may have finished


def test_a_label_finds_its_clients_jobs_finished_or_not_and_no_one_elses(client):
    first = client.submit(msgspec.structs.replace(params(), task="task(a1)"), client_id=ALICE)
    list(client.watch(first.job_id, ALICE))
    second = client.submit(msgspec.structs.replace(params(), task="task(a1)"), client_id=ALICE)
    client.submit(params(), client_id=ALICE)
    assert [j.job_id for j in client.task_jobs("task(a1)", ALICE)] == [first.job_id, second.job_id]
    assert client.task_jobs("task(a1)", BOB) == [] and client.task_jobs("task(b2)", ALICE) == []


def test_finished_jobs_are_listed_newest_first_for_their_client_only(client):
    first = client.submit(params(), client_id=ALICE)
    list(client.watch(first.job_id, ALICE))
    second = client.submit(params(), client_id=ALICE)
    list(client.watch(second.job_id, ALICE))
    theirs = client.submit(params(), client_id=BOB)
    list(client.watch(theirs.job_id, BOB))
    assert [j.job_id for j in client.finished_jobs(10, ALICE)][:2] == [second.job_id, first.job_id]
    assert theirs.job_id not in [j.job_id for j in client.finished_jobs(10, ALICE)]
    assert [j.job_id for j in client.finished_jobs(1, ALICE)] == [second.job_id]


def test_a_finished_job_is_deleted_and_then_unknown(client):
    job = client.submit(params(), client_id=ALICE)
    list(client.watch(job.job_id, ALICE))
    assert client.delete(job.job_id, ALICE).job_id == job.job_id
    with pytest.raises(RemoteError) as caught:
        client.get_job(job.job_id, ALICE)
    assert caught.value.error.code is ErrorCode.NOT_FOUND


def test_a_job_without_previews_has_none_to_fetch(client):
    job = client.submit(params(), client_id=ALICE)
    list(client.watch(job.job_id, ALICE))
    with pytest.raises(RemoteError) as caught:
        client.fetch_preview(job.job_id, ALICE)
    assert caught.value.error.code is ErrorCode.NOT_FOUND
