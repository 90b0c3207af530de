"""The model server's behaviour over its real socket, with fake pipelines."""

from __future__ import annotations

import io
import threading
import time

import pytest
import zmq
from PIL import Image

from gateway.model_client import ModelClient, ModelServerUnavailable, RemoteError
from model_server.pipeline import load_error
from protocol import codec
from protocol.errors import ErrorCode
from protocol.messages import (Cancelled, Completed, Failed, JobState, ModelState, Pong, Progress, StopMode,
                               Rejected, Submit)
from tests.helpers import wait_until
from tests.helpers.servers import FailingPipeline, params


def run_to_end(client: ModelClient, job_id: str):
    events = list(client.watch(job_id))
    assert all(isinstance(e, Progress) for e in events[:-1])
    return events


def test_watch_streams_progress_then_completed_and_the_image_can_be_fetched(start_server):
    _, client = start_server()
    job = client.submit(params(steps=4, width=96, height=64))
    events = run_to_end(client, job.job_id)
    assert isinstance(events[-1], Completed)
    steps = [e.job.progress.step for e in events if e.job.state is JobState.RUNNING]
    # In order; the last step may be reported by the completion itself when the worker outpaces the IO thread.
    assert steps == sorted(steps) and steps[-1] >= 3 and events[-1].job.progress.step == 4
    info, data = client.fetch(job.job_id)
    assert (info.width, info.height, info.media_type) == (96, 64, "image/png")
    assert Image.open(io.BytesIO(data)).size == (96, 64)


def test_ping_answers_at_once_while_a_job_runs(start_server):
    step = 0.5
    server, client = start_server(step_seconds=step)
    job = client.submit(params(steps=30))
    wait_until(lambda: server.table.running is not None, 5)
    started = time.monotonic()
    pong = client.ping()
    assert time.monotonic() - started < step / 2  # answered mid-step, not at the next step boundary
    assert pong.running_job == job.job_id and pong.model_state is ModelState.READY
    client.cancel(job.job_id)


def test_cancel_mid_job_stops_it_and_the_next_job_still_succeeds(start_server):
    server, client = start_server(step_seconds=0.05)
    job = client.submit(params(steps=100))
    wait_until(lambda: (server.table.running or 0) and server.table.running.step >= 2, 5)
    view = client.cancel(job.job_id)
    assert view.cancel_requested
    assert isinstance(run_to_end(client, job.job_id)[-1], Cancelled)
    assert server.table.get(job.job_id).step < 200
    nxt = client.submit(params(steps=2))
    assert isinstance(run_to_end(client, nxt.job_id)[-1], Completed)


def test_a_failing_pipeline_fails_the_job_not_the_server(start_server):
    _, client = start_server()
    bad = client.submit(params(prompt="boom"))
    final = run_to_end(client, bad.job_id)[-1]
    assert isinstance(final, Failed)
    assert final.job.error.code is ErrorCode.PIPELINE_ERROR
    assert "exploded" not in final.job.error.message  # internals stay in the log
    good = client.submit(params())
    assert isinstance(run_to_end(client, good.job_id)[-1], Completed)


def test_malformed_frames_get_a_protocol_error_and_the_server_survives(start_server):
    server, client = start_server()
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.connect(server.bound_address)
    for frames in ([b"garbage"], [b"SDCPU/0", b"x"], [codec.PROTOCOL_ID, b"\xc1"]):
        sock.send_multipart(frames)
        assert sock.poll(3000)
        envelope, _ = codec.decode(sock.recv_multipart())
        assert isinstance(envelope.body, Rejected)
        assert envelope.body.error.code is ErrorCode.PROTOCOL_MISMATCH
    # A reply message sent as a request is refused too.
    sock.send_multipart(codec.encode(Pong(model="x", model_state=ModelState.READY), 9))
    assert sock.poll(3000)
    assert isinstance(codec.decode(sock.recv_multipart())[0].body, Rejected)
    sock.close(0)
    assert client.ping().model_state is ModelState.READY


def test_a_full_queue_is_refused_with_a_retryable_error(start_server):
    server, client = start_server(step_seconds=0.05, queue_size=1)
    running = client.submit(params(steps=100))
    wait_until(lambda: server.table.running is not None, 5)
    queued = client.submit(params())
    with pytest.raises(RemoteError) as info:
        client.submit(params())
    assert info.value.error.code is ErrorCode.QUEUE_FULL and info.value.error.retryable
    for job in (queued, running):
        client.cancel(job.job_id)


def test_submit_while_loading_is_refused_as_not_ready_then_accepted_once_loaded(start_server):
    loaded = threading.Event()

    def slow_load():
        loaded.wait(10)
        return FailingPipeline()

    _, client = start_server(load=slow_load, wait_ready=False)
    assert client.ping().model_state is ModelState.LOADING
    with pytest.raises(RemoteError) as info:
        client.submit(params())
    assert info.value.error.code is ErrorCode.NOT_READY and info.value.error.retryable
    loaded.set()
    wait_until(lambda: client.ping().model_state is ModelState.READY, 5)
    assert isinstance(run_to_end(client, client.submit(params()).job_id)[-1], Completed)


def test_a_failed_load_is_reported_with_its_hint(start_server):
    def broken_load():
        raise load_error("could not load model 'x'", "Set SD_MODEL to a local directory.")

    _, client = start_server(load=broken_load, wait_ready=False)
    wait_until(lambda: client.ping().model_state is ModelState.FAILED, 5)
    assert client.ping().error.hint == "Set SD_MODEL to a local directory."
    with pytest.raises(RemoteError) as info:
        client.submit(params())
    assert info.value.error.code is ErrorCode.NOT_READY and not info.value.error.retryable


def test_parameters_the_pipeline_cannot_take_are_refused(start_server):
    _, client = start_server()
    for bad in (params(scheduler="nonsense"), params(width=65), params(n=99), params(format="gif"),
                params(token_merging=0.9), params(token_merging=float("nan"))):
        with pytest.raises(RemoteError) as info:
            client.submit(bad)
        assert info.value.error.code is ErrorCode.INVALID_PARAMS


def test_n_images_use_consecutive_seeds_and_the_same_seed_gives_the_same_bytes(start_server):
    _, client = start_server()
    job = client.submit(params(n=2, seed=41))
    run_to_end(client, job.job_id)
    (i0, d0), (i1, d1) = client.fetch(job.job_id, 0), client.fetch(job.job_id, 1)
    assert (i0.seed, i1.seed) == (41, 42) and d0 != d1
    again = client.submit(params(seed=41))
    run_to_end(client, again.job_id)
    assert client.fetch(again.job_id)[1] == d0
    with pytest.raises(RemoteError) as info:
        client.fetch(job.job_id, 2)
    assert info.value.error.code is ErrorCode.NOT_FOUND


def test_unknown_jobs_are_not_found(start_server):
    _, client = start_server()
    for call in (client.get_job, client.cancel, client.fetch):
        with pytest.raises(RemoteError) as info:
            call("does-not-exist")
        assert info.value.error.code is ErrorCode.NOT_FOUND


def test_a_client_notices_a_missing_server_within_its_deadline(tmp_path):
    client = ModelClient(f"ipc://{tmp_path}/nobody.sock", timeout=1.0, connect_timeout=0.5)
    started = time.monotonic()
    with pytest.raises(ModelServerUnavailable):
        client.ping()
    assert time.monotonic() - started < 2.0


def test_watchers_hear_heartbeats_while_nothing_changes(start_server):
    server, client = start_server(step_seconds=0.05, queue_size=4)
    blocker = client.submit(params(steps=100))
    waiting = client.submit(params())
    stream = client.watch(waiting.job_id)
    first, second = next(stream), next(stream)  # the second arrives by heartbeat alone
    assert first.job.state is second.job.state is JobState.QUEUED
    stream.close()
    client.cancel(blocker.job_id)
    client.cancel(waiting.job_id)
    assert isinstance(client.ping(), Pong)


def _running_at_step(server, n: int):
    return wait_until(lambda: (server.table.running or 0) and server.table.running.step >= n, 5)


def test_an_interrupt_keeps_the_partial_image_and_skips_the_remaining_ones(start_server):
    server, client = start_server(step_seconds=0.02)
    job = client.submit(params(steps=100, n=3))
    _running_at_step(server, 2)
    client.cancel(job.job_id, StopMode.INTERRUPT)
    final = run_to_end(client, job.job_id)[-1]
    assert isinstance(final, Completed) and final.job.interrupted
    assert len(final.job.images) == 1
    assert server.table.get(job.job_id).step < 200


def test_skip_ends_the_current_image_and_moves_on_to_the_next(start_server):
    server, client = start_server(step_seconds=0.02)
    job = client.submit(params(steps=100, n=2))
    _running_at_step(server, 2)
    client.cancel(job.job_id, StopMode.SKIP)
    wait_until(lambda: server.table.get(job.job_id).image_index == 1, 5)
    assert server.table.get(job.job_id).state is JobState.RUNNING
    client.cancel(job.job_id, StopMode.SKIP)
    final = run_to_end(client, job.job_id)[-1]
    assert isinstance(final, Completed) and len(final.job.images) == 2


def test_an_interrupt_never_touches_a_queued_job(start_server):
    server, client = start_server(step_seconds=0.02)
    running = client.submit(params(steps=100))
    queued = client.submit(params(steps=2))
    _running_at_step(server, 1)
    client.cancel(queued.job_id, StopMode.INTERRUPT)
    client.cancel(running.job_id, StopMode.INTERRUPT)
    assert isinstance(run_to_end(client, queued.job_id)[-1], Completed)
    assert not client.get_job(queued.job_id).interrupted


def test_a_running_job_that_asked_for_previews_has_one_to_fetch(start_server):
    server, client = start_server(step_seconds=0.05)
    plain = client.submit(params(steps=3))
    job = client.submit(params(steps=100, preview=True, width=128))
    with pytest.raises(RemoteError):
        client.fetch_preview(plain.job_id)
    wait_until(lambda: (client.get_job(job.job_id).progress.preview_step or 0) >= 2, 10)
    info, data = client.fetch_preview(job.job_id)
    assert info.media_type == "image/jpeg" and Image.open(io.BytesIO(data)).size == (16, 8)
    client.cancel(job.job_id)
    run_to_end(client, job.job_id)
    with pytest.raises(RemoteError) as err:
        client.fetch_preview(job.job_id)
    assert err.value.error.code is ErrorCode.NOT_FOUND


def test_a_peer_cannot_reuse_a_job_id_or_take_back_a_started_or_foreign_job(start_server):
    """Submit.job_id and Release, as a hostile or confused peer would send them."""
    from protocol.messages import Submit

    server, client = start_server(step_seconds=0.2)
    running = client.submit(params(steps=20), client_id="alice")
    queued = client.submit(params(steps=2), client_id="alice")
    assert running.job_id[:8] == server.table.server_id  # ids name the server that made them
    with pytest.raises(RemoteError) as err:  # one of its own ids: only it makes those
        client.send_submit(Submit(params=params(), client_id="mallory", job_id=queued.job_id))
    assert err.value.error.code is ErrorCode.INVALID_PARAMS and "prefix" in err.value.error.message
    placed = client.send_submit(Submit(params=params(steps=2), client_id="alice", job_id="feedbeef" + "1" * 24))
    with pytest.raises(RemoteError) as err:  # an id it already has: refused, nothing replaced
        client.send_submit(Submit(params=params(), client_id="mallory", job_id=placed.job_id))
    assert err.value.error.code is ErrorCode.INVALID_PARAMS and "already exists" in err.value.error.message
    with pytest.raises(RemoteError) as err:  # not an id of the protocol's shape: refused when decoded
        client.send_submit(Submit(params=params(), job_id="../../etc/passwd"))
    assert "job_id" in err.value.error.message and client.ping().model_state is ModelState.READY
    wait_until(lambda: client.get_job(running.job_id).state is JobState.RUNNING, 10)
    with pytest.raises(RemoteError) as err:  # started: it stays
        client.release(running.job_id, "alice")
    assert err.value.error.code is ErrorCode.INVALID_PARAMS and "only a queued job" in err.value.error.message
    with pytest.raises(RemoteError) as err:  # someone else's: as unknown
        client.release(queued.job_id, "mallory")
    assert err.value.error.code is ErrorCode.NOT_FOUND
    assert client.release(queued.job_id, "alice").state is JobState.QUEUED  # its owner's gateway may
    with pytest.raises(RemoteError) as err:
        client.get_job(queued.job_id, "alice")
    assert err.value.error.code is ErrorCode.NOT_FOUND
    with pytest.raises(RemoteError) as err:  # given back, it is placed on another server, never here again
        client.send_submit(Submit(params=params(steps=2), client_id="alice", job_id=queued.job_id))
    assert "prefix" in err.value.error.message
    client.cancel(running.job_id, client_id="alice")


def test_a_frame_larger_than_any_legal_request_drops_its_sender_unread(start_server):
    from zmq.utils.monitor import recv_monitor_message

    server, client = start_server(max_upload_bytes=2**20)
    limit = codec.largest_request_bytes(2**20)
    assert server.router.getsockopt(zmq.MAXMSGSIZE) == limit  # libzmq drops the peer on the frame's header
    sock = zmq.Context.instance().socket(zmq.DEALER)
    monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    sock.connect(server.bound_address)
    sock.send_multipart([codec.PROTOCOL_ID, b"\0" * (limit + 1)])
    assert monitor.poll(3000), "the server hangs up on the sender"
    assert recv_monitor_message(monitor)["event"] == zmq.EVENT_DISCONNECTED
    assert not sock.poll(200), "and never answers it"
    sock.disable_monitor()
    monitor.close(0)
    sock.close(0)
    assert client.ping().model_state is ModelState.READY


def test_a_peer_cannot_choose_a_job_id_with_this_servers_prefix(start_server):
    server, client = start_server()
    forged = server.table.server_id + "0" * 24
    with pytest.raises(RemoteError) as caught:
        client.send_submit(Submit(params=params(), job_id=forged))
    assert caught.value.error.code is ErrorCode.INVALID_PARAMS and "prefix" in caught.value.error.message
    placed_again = "feedbeef" + "0" * 24  # a dead server's job, placed here under its own id
    assert client.send_submit(Submit(params=params(), job_id=placed_again)).job_id == placed_again


def test_a_ping_names_the_default_model_never_its_path(start_server, tmp_path):
    folder = tmp_path / "private" / "my-model"
    server, client = start_server(model=str(folder))
    assert client.ping().model == "my-model"


class PreparingPipeline(FailingPipeline):
    """Its one-time part takes until stopped, the first time; then it is made."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.ahead = []  # what each idle-time call ended with

    def prepare_ahead(self, stop):
        if len(self.ahead) >= 1:  # the second idle time finishes it
            self.ahead.append("made")
            return True
        while not stop():
            time.sleep(0.01)
        self.ahead.append("stopped")
        return False


def test_idle_time_prepares_ahead_and_a_job_arriving_stops_it_at_once(start_server):
    pipeline = PreparingPipeline(step_seconds=0.01)
    server, client = start_server(load=lambda: pipeline)
    wait_until(lambda: server.table.depth == 0 and server.state.model_state is ModelState.READY, 5)
    time.sleep(1.0)  # idle: the preparation runs (and would run forever)
    assert pipeline.ahead == []
    started = time.monotonic()
    job = client.submit(params(steps=2))
    wait_until(lambda: client.get_job(job.job_id).state is JobState.SUCCEEDED, 5)
    assert time.monotonic() - started < 2.0 and pipeline.ahead[0] == "stopped"
    wait_until(lambda: pipeline.ahead == ["stopped", "made"], 5)  # the next idle time resumes it
    time.sleep(1.2)
    assert pipeline.ahead == ["stopped", "made"]  # and, made, it is not asked again until a job ran
