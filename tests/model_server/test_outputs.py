"""Outputs on disk: images with their parameters, records that survive a restart, lost jobs told."""

from __future__ import annotations

import io
import time

import pytest
from PIL import Image

from gateway.model_client import RemoteError
from model_server.jobs.outputs import JobRecord, OutputStore
from protocol.errors import ErrorCode
from protocol.messages import Completed, JobState
from tests.helpers import wait_until
from tests.helpers.servers import params

LOST = "0" * 31 + "1"  # a job id of the shape the table makes (uuid4 hex)


def finish(client, job_id):
    return list(client.watch(job_id))[-1]


def test_finished_images_are_written_with_a1111_infotext_and_survive_a_restart(start_server, tmp_path):
    outputs = tmp_path / "outputs"
    server, client = start_server(outputs_dir=str(outputs))
    job = client.submit(params(prompt="a red cube", seed=77, n=2, negative_prompt="blurry"))
    assert isinstance(finish(client, job.job_id), Completed)
    _, first = client.fetch(job.job_id, 0)
    files = sorted(outputs.glob("*/*.png"))
    assert [f.name for f in files] == [f"{job.job_id}-0.png", f"{job.job_id}-1.png"]
    text = Image.open(files[0]).text["parameters"]
    assert text.startswith("a red cube\nNegative prompt: blurry\nSteps: 5,") and "Seed: 77" in text

    server.request_shutdown()
    _, client2 = start_server(outputs_dir=str(outputs))
    view = client2.get_job(job.job_id)
    assert view.state is JobState.SUCCEEDED and [i.seed for i in view.images] == [77, 78]
    assert client2.fetch(job.job_id, 0)[1] == first


def test_jobs_unfinished_at_a_crash_are_reported_failed_and_retryable(tmp_path, start_server):
    store = OutputStore(tmp_path / "outputs", budget_bytes=10**9)
    store.accepted(JobRecord(job_id=LOST, state=JobState.RUNNING, params=params(), created_at=1.0))
    _, client = start_server(outputs_dir=str(tmp_path / "outputs"))
    view = client.get_job(LOST)
    assert view.state is JobState.FAILED
    assert view.error.code is ErrorCode.MODEL_SERVER_LOST and view.error.retryable
    assert not list((tmp_path / "outputs" / "pending").iterdir())


def test_the_disk_budget_deletes_the_oldest_outputs(start_server, tmp_path):
    outputs = tmp_path / "outputs"
    _, client = start_server(outputs_dir=str(outputs), outputs_budget_bytes=40_000)
    ids = []
    for seed in range(4):
        job = client.submit(params(seed=seed, width=96, height=96))  # ~28 KB PNG of noise each
        finish(client, job.job_id)
        ids.append(job.job_id)
    assert sum(f.stat().st_size for f in outputs.glob("*/*.png")) <= 40_000
    with pytest.raises(RemoteError) as info:
        client.fetch(ids[0])
    assert info.value.error.code is ErrorCode.EXPIRED and "budget" in info.value.error.hint
    assert Image.open(io.BytesIO(client.fetch(ids[-1])[1])).size == (96, 96)


def test_one_client_cannot_fill_the_queue(start_server):
    server, client = start_server(step_seconds=0.05, max_queued_per_client=2)
    running = client.submit(params(steps=100), client_id="a")
    waiting = [client.submit(params(), client_id="a") for _ in range(2)]
    with pytest.raises(RemoteError) as info:
        client.submit(params(), client_id="a")
    assert info.value.error.code is ErrorCode.QUEUE_FULL and "you already have 2" in info.value.error.message
    other = client.submit(params(), client_id="b")
    for job in [running, *waiting, other]:
        client.cancel(job.job_id)


def test_new_jobs_are_refused_below_the_free_memory_floor(start_server):
    _, client = start_server(min_free_memory_mb=10**9)
    with pytest.raises(RemoteError) as info:
        client.submit(params())
    error = info.value.error
    assert error.code is ErrorCode.OUT_OF_MEMORY and error.retryable and "MB" in error.message
    assert client.ping().stats["jobs_rejected"] == 1


def test_results_on_disk_are_not_also_held_in_memory(start_server, tmp_path):
    server, client = start_server(outputs_dir=str(tmp_path / "outputs"))
    job = client.submit(params(width=128, height=128))
    finish(client, job.job_id)
    assert server.table.get(job.job_id).result_bytes == 0
    assert Image.open(io.BytesIO(client.fetch(job.job_id)[1])).size == (128, 128)


def test_after_the_ttl_a_job_is_expired_and_its_files_are_gone_even_when_read_back_from_disk(start_server, tmp_path):
    outputs = tmp_path / "outputs"
    server, client = start_server(outputs_dir=str(outputs), result_ttl_seconds=1.0)
    job = client.submit(params(steps=1))
    assert isinstance(finish(client, job.job_id), Completed)
    assert client.fetch(job.job_id)[1]
    server.table._jobs.clear()  # as after a restart: the job comes back from its record
    assert client.get_job(job.job_id).state is JobState.SUCCEEDED
    time.sleep(1.5)
    with pytest.raises(RemoteError) as caught:
        client.get_job(job.job_id)
    assert caught.value.error.code is ErrorCode.EXPIRED
    assert not list(outputs.glob(f"*/{job.job_id}*")), "its image and record must be deleted"


def test_records_left_by_an_earlier_run_are_deleted_once_past_the_ttl(tmp_path):
    store = OutputStore(tmp_path / "outputs", budget_bytes=10**9)
    old, new = "a" * 32, "b" * 32
    for job_id, finished in ((old, time.time() - 100), (new, time.time())):
        record = JobRecord(job_id=job_id, state=JobState.SUCCEEDED, params=params(), created_at=1.0,
                           finished_at=finished, images=[])
        store.finished(record, [])
    assert store.delete_finished_before(time.time() - 50) == [old]
    assert store.load(old) is None and store.load(new) is not None


def _record(job_id: str, state: JobState, finished_at: float | None = None) -> JobRecord:
    from protocol.messages import ImageInfo

    images = [ImageInfo(index=0, seed=1, media_type="image/png", width=64, height=64, size_bytes=3)]
    return JobRecord(job_id=job_id, state=state, params=params(), created_at=time.time(), client_id="alice",
                     finished_at=finished_at, images=images if state is JobState.SUCCEEDED else [])


def test_replicas_on_shared_storage_answer_for_a_lost_peers_finished_jobs_and_sweep_them(tmp_path):
    lost, alive = (OutputStore(tmp_path / name, 10**6, peers=tmp_path) for name in ("lost", "alive"))
    done, unfinished = "a" * 32, "b" * 32
    lost.accepted(_record(done, JobState.QUEUED))
    lost.finished(_record(done, JobState.SUCCEEDED, finished_at=time.time()), [b"png"])
    lost.accepted(_record(unfinished, JobState.QUEUED))  # died with it, or placed again: its server answers
    record = alive.load(done)
    assert record.state is JobState.SUCCEEDED and alive.read_image(record, 0) == b"png"
    assert alive.load(unfinished) is None
    assert OutputStore(tmp_path / "solo", 10**6).load(done) is None  # no peers: only its own folder
    record.files = ["../../etc/passwd"]
    assert alive.read_image(record, 0) is None  # paths still confined to the shared folder
    assert alive.delete_finished_before(time.time() + 1) == [done]
    assert not (tmp_path / "lost" / "jobs" / f"{done}.json").exists() and not list((tmp_path / "lost").glob("*/*.png"))


def test_a_job_queued_at_a_crash_that_never_started_runs_after_the_restart_under_its_id(tmp_path, start_server,
                                                                                        monkeypatch):
    from model_server.transport import server as server_module
    from protocol.messages import Submit

    monkeypatch.setattr(server_module, "AWAIT_UPLOADS_SECONDS", 4.0)
    store = OutputStore(tmp_path / "outputs", budget_bytes=10**9)
    waiting, uploaded = "ab" * 16, "cd" * 16
    store.accepted(JobRecord(job_id=waiting, state=JobState.QUEUED, params=params(prompt="queued"),
                             created_at=time.time() - 10, client_id="alice"))
    store.accepted(JobRecord(job_id=uploaded, state=JobState.QUEUED, params=params(mode="img2img"),
                             created_at=time.time() - 9, client_id="alice"))
    forgotten = "ef" * 16  # an upload nobody sends again
    store.accepted(JobRecord(job_id=forgotten, state=JobState.QUEUED, params=params(mode="img2img"),
                             created_at=time.time() - 8, client_id="bob"))
    server, client = start_server(outputs_dir=str(tmp_path / "outputs"))
    pending = client.get_job(uploaded)  # its upload lived in memory only: it waits for its gateway's copy
    assert pending.state is JobState.QUEUED and pending.awaiting_uploads
    # Its gateway still has the upload: placed again under its id, here too (it never started).
    again = client.send_submit(Submit(params=params(), client_id="alice", job_id=uploaded))
    assert again.job_id == uploaded and not again.awaiting_uploads
    done = finish(client, waiting)
    assert isinstance(done, Completed) and done.job.params.prompt == "queued"
    assert isinstance(finish(client, uploaded), Completed)
    with pytest.raises(RemoteError):
        client.get_job(waiting, "mallory")  # still its owner's only
    # Nobody sends the other one's: once the model has been ready a while, it ends lost, retryable.
    lost = wait_until(lambda: (lambda v: v if v.state.terminal else None)(client.get_job(forgotten)), 10)
    assert lost.state is JobState.FAILED and lost.error.code is ErrorCode.MODEL_SERVER_LOST and lost.error.retryable
    with pytest.raises(RemoteError) as info:  # but a job that ran, or finished, is never taken twice
        client.send_submit(Submit(params=params(), client_id="alice", job_id=waiting))
    assert "already exists" in info.value.error.message
