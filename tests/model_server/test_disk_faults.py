"""A full, read-only or broken outputs disk: nothing lost, the service never down, leftovers gone.

Results are a cache: a job whose images cannot be written still succeeds and serves them from
memory, its view says they were not stored, and the server's storage status turns degraded until a
write succeeds again. Each disk is a small tmpfs of the test's own (tests.helpers.disks).
"""

from __future__ import annotations

import io
import subprocess
import time

import pytest
from PIL import Image

from gateway.model_client import RemoteError
from model_server.jobs.disk import StorageUnusable
from model_server.jobs.outputs import JobRecord, OutputStore
from protocol.errors import ErrorCode
from protocol.messages import Completed, ImageInfo, JobState
from tests.helpers import PYTHON, ROOT, base_env
from tests.helpers.disks import small_disk
from tests.helpers.servers import params

LOST = "0" * 31 + "2"


def finish(client, job_id):
    return list(client.watch(job_id))[-1]


def leftovers(outputs):
    """What must never stay on disk: temporary files, empty or cut-short images."""
    tmp = [p.name for p in outputs.rglob("*.tmp")]
    partial = [p.name for p in outputs.glob("*/*.png") if not p.read_bytes().endswith(b"IEND\xaeB`\x82")]
    return tmp + partial


def test_a_full_disk_costs_the_disk_copy_never_the_job_and_health_recovers_with_room(start_server, tmp_path):
    with small_disk(tmp_path / "disk", 1024) as disk:
        outputs = disk.folder / "outputs"
        server, client = start_server(outputs_dir=str(outputs), min_free_disk_mb=0)
        stored = client.submit(params(width=64, height=64))
        assert isinstance(finish(client, stored.job_id), Completed)
        assert client.ping().storage.ok
        disk.fill()
        job = client.submit(params(width=128, height=128, n=2))
        done = finish(client, job.job_id)
        assert done.job.state is JobState.SUCCEEDED
        assert "No space left" in done.job.not_stored
        for index in (0, 1):  # served from memory
            assert Image.open(io.BytesIO(client.fetch(job.job_id, index)[1])).size == (128, 128)
        assert client.fetch(stored.job_id)[1]  # earlier results still served from disk
        pong = client.ping()
        assert not pong.storage.ok and "No space left" in pong.storage.reason and pong.stats["storage_errors"] >= 1
        assert leftovers(outputs) == []
        assert not list(outputs.glob(f"*/{job.job_id}-*")), "no image of a job whose record could not name it"

        disk.free()
        again = client.submit(params(width=64, height=64))
        assert finish(client, again.job_id).job.not_stored == ""
        assert client.ping().storage.ok, "a write that succeeds clears the degraded state"
        assert list(outputs.glob(f"*/{again.job_id}-0.png"))


def test_a_server_restarted_on_a_full_disk_starts_and_reports_what_it_could_not_recover(start_server, tmp_path):
    with small_disk(tmp_path / "disk", 512) as disk:
        outputs = disk.folder / "outputs"
        store = OutputStore(outputs, budget_bytes=10**9)
        store.accepted(JobRecord(job_id=LOST, state=JobState.RUNNING, params=params(), created_at=time.time() - 5))
        disk.fill()
        server, client = start_server(outputs_dir=str(outputs), min_free_disk_mb=0)  # no crash loop
        view = client.get_job(LOST)
        assert view.state is JobState.FAILED and view.error.code is ErrorCode.MODEL_SERVER_LOST
        pong = client.ping()
        assert pong.model_state.value == "ready" and not pong.storage.ok
        assert (outputs / "pending" / LOST).exists(), "kept, so the next start with room writes it down"
        disk.free()
        server.request_shutdown()
        _, client2 = start_server(outputs_dir=str(outputs), min_free_disk_mb=0)
        assert client2.get_job(LOST).state is JobState.FAILED and client2.ping().storage.ok
        assert not (outputs / "pending" / LOST).exists()


def test_a_disk_made_read_only_at_run_time_keeps_jobs_succeeding_and_says_so(start_server, tmp_path):
    with small_disk(tmp_path / "disk", 4096) as disk:
        outputs = disk.folder / "outputs"
        _, client = start_server(outputs_dir=str(outputs), min_free_disk_mb=0)
        disk.read_only()
        job = client.submit(params(width=64, height=64))
        done = finish(client, job.job_id)
        assert done.job.state is JobState.SUCCEEDED and "Read-only" in done.job.not_stored
        assert client.fetch(job.job_id)[1]
        assert "Read-only" in client.ping().storage.reason
        disk.read_only(False)


def test_a_read_only_outputs_dir_at_start_is_a_configuration_error_exit_2(tmp_path):
    with small_disk(tmp_path / "disk", 256) as disk:
        disk.read_only()
        with pytest.raises(StorageUnusable, match="cannot be written"):
            OutputStore(disk.folder / "outputs", 10**6)
        done = subprocess.run([PYTHON, "-m", "model_server"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                              env=base_env(OUTPUTS_DIR=str(disk.folder / "outputs"), MODEL_SERVER_PIPELINE="fake",
                                           MODEL_SERVER_BIND=f"ipc://{tmp_path}/ro.sock"))
        assert done.returncode == 2, done.stderr[-2000:]
        assert "bad configuration" in done.stderr and "OUTPUTS_DIR" in done.stderr and "Traceback" not in done.stderr


def test_below_the_free_space_mark_new_jobs_are_refused_retryable(start_server, tmp_path):
    with small_disk(tmp_path / "disk", 1024) as disk:
        _, client = start_server(outputs_dir=str(disk.folder / "outputs"), min_free_disk_mb=2)
        with pytest.raises(RemoteError) as info:
            client.submit(params())
        error = info.value.error
        assert error.code is ErrorCode.DISK_FULL and error.retryable and error.retry_after and "MB" in error.message
        pong = client.ping()
        assert not pong.storage.ok and "MIN_FREE_DISK_MB" in pong.storage.reason


def test_leftovers_of_a_crash_are_removed_at_start_and_no_record_points_at_a_partial_image(tmp_path):
    outputs = tmp_path / "outputs"
    store = OutputStore(outputs, 10**9)
    whole = "a" * 32
    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, format="PNG")
    info = [ImageInfo(index=i, seed=i, media_type="image/png", width=8, height=8, size_bytes=9) for i in (0, 1)]
    record = JobRecord(job_id=whole, state=JobState.SUCCEEDED, params=params(), created_at=1.0,
                       finished_at=time.time(), images=info)
    store.finished(record, [png.getvalue(), png.getvalue()])
    day = outputs / record.files[0].split("/")[0]
    (outputs / record.files[1]).write_bytes(png.getvalue()[:20])  # cut short by an older version's crash
    (outputs / "jobs" / f"{'b' * 32}.123.tmp").write_bytes(b"{")  # a record's temporary file
    (day / f".{'c' * 32}-0.png.9-9.tmp").write_bytes(b"x")  # an image's
    (day / f"{'d' * 32}-0.png").write_bytes(b"")  # an image no record names (its record never written)
    (outputs / "pending" / whole).touch()  # a marker of a finished job
    (outputs / "pending" / ("e" * 32)).touch()  # a marker without a record

    again = OutputStore(outputs, 10**9)
    assert again.clean_leftovers() == 6
    assert sorted(p.name for p in outputs.rglob("*") if p.is_file()) == [f"{whole}-0.png", f"{whole}.json"]
    kept = again.load(whole)
    assert kept.files == record.files[:1] and "incomplete" in kept.not_stored
    assert again.read_image(kept, 0) == png.getvalue() and again.read_image(kept, 1) is None
