"""A peer on the ZMQ socket gets no further than the gateway would: the contract holds on the wire."""

from __future__ import annotations

import msgspec
import pytest

from gateway.model_client import RemoteError
from model_server.jobs.outputs import JobRecord, OutputStore
from protocol.errors import ErrorCode
from protocol.messages import Completed, JobState
from tests.helpers.servers import params


@pytest.mark.parametrize("bad", [dict(steps=1000), dict(width=1_048_576, height=1_048_576), dict(width=100),
                                 dict(prompt="x" * 5000), dict(prompt=" \x01 "), dict(n=50),
                                 dict(token_merging=float("nan")), dict(scheduler="nope"), dict(format="gif"),
                                 dict(guidance_scale=-1.0), dict(seed=-5)])
def test_a_submit_outside_the_protocols_bounds_is_refused_as_invalid_params(start_server, bad):
    server, client = start_server()
    with pytest.raises(RemoteError) as caught:
        client.submit(params(**bad), client_id="peer")
    assert caught.value.error.code is ErrorCode.INVALID_PARAMS
    assert server.table.depth == 0 and client.ping().model_state.value == "ready"


def test_the_servers_configured_limits_hold_against_a_peer(start_server):
    _, client = start_server(max_steps=10, max_width=256, max_height=256, max_images=2, max_prompt_length=20,
                             default_steps=10, default_size=256)
    for bad, field in ((dict(steps=11), "steps"), (dict(width=264), "width"), (dict(n=3), "n"),
                       (dict(prompt="y" * 21), "prompt")):
        with pytest.raises(RemoteError) as caught:
            client.submit(params(**bad))
        assert caught.value.error.code is ErrorCode.INVALID_PARAMS and field in caught.value.error.message
    assert client.submit(params(steps=10, width=256, n=2)).state is JobState.QUEUED


def test_a_sampler_step_count_the_pipeline_cannot_run_is_refused_at_submit(start_server):
    _, client = start_server()
    with pytest.raises(RemoteError) as caught:
        client.submit(params(scheduler="lcm", steps=60))
    assert caught.value.error.code is ErrorCode.INVALID_PARAMS and "at most 50" in caught.value.error.message
    assert client.submit(params(scheduler="lcm", steps=50)).state is JobState.QUEUED


@pytest.mark.parametrize("job_id", ["../../evil", "../../../etc/hostname", "/etc/passwd", "a" * 33, ""])
def test_job_ids_that_are_not_ours_are_unknown_on_every_request(start_server, tmp_path, job_id):
    _, client = start_server(outputs_dir=str(tmp_path / "outputs"))
    (tmp_path / "evil.json").write_bytes(b"{}")
    for call in (client.get_job, client.fetch, client.fetch_preview, client.cancel, client.delete):
        with pytest.raises(RemoteError) as caught:
            call(job_id)
        assert caught.value.error.code is ErrorCode.NOT_FOUND


def test_a_record_naming_a_file_outside_the_outputs_folder_is_never_read(start_server, tmp_path):
    outputs = tmp_path / "outputs"
    server, client = start_server(outputs_dir=str(outputs))
    job = client.submit(params(steps=1))
    assert isinstance(list(client.watch(job.job_id))[-1], Completed)
    record_path = outputs / "jobs" / f"{job.job_id}.json"
    record = msgspec.json.decode(record_path.read_bytes(), type=JobRecord)
    secret = tmp_path / "secret.txt"
    secret.write_text("not an image")
    record.files = ["../secret.txt"]
    record_path.write_bytes(msgspec.json.encode(record))
    server.table._jobs.clear()  # as after a restart: read back from the record
    with pytest.raises(RemoteError) as caught:
        client.fetch(job.job_id)
    assert caught.value.error.code is ErrorCode.EXPIRED
    assert OutputStore(outputs, 10**9).read_image(record, 0) is None
