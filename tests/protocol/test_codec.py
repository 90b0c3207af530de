"""Round trips, version checks and refusal of anything that is not a known message."""

from __future__ import annotations

import pickle

import msgspec
import pytest

from protocol import codec
from protocol.errors import ErrorCode, ProtocolError
from protocol.messages import (Accepted, Cancel, Cancelled, Completed, ErrorInfo, Failed, FetchPreview, FetchResult,
                               GenerationParams, GetJob, ImageInfo, JobInfo, JobState, JobView, ModelState,
                               Ping, Pong, Progress, ProgressInfo, Rejected, Result, Submit, Watch)

PARAMS = GenerationParams(prompt="a cat", seed=7, steps=3, width=64, height=64)
VIEW = JobView(job_id="j1", state=JobState.RUNNING, created_at=1.5, params=PARAMS,
               progress=ProgressInfo(step=1, total_steps=3, seconds_per_step=0.5, eta_seconds=1.0))
ALL_MESSAGES = [
    Ping(), Submit(params=PARAMS, client_id="c", request_id="r"), GetJob(job_id="j1"), Watch(job_id="j1"),
    FetchResult(job_id="j1", index=1), Cancel(job_id="j1"), FetchPreview(job_id="j1"),
    Pong(model="m", model_state=ModelState.READY, optimizations={"dtype": "bfloat16", "threads": 2}),
    Accepted(job=VIEW), JobInfo(job=VIEW), Progress(job=VIEW), Completed(job=VIEW), Failed(job=VIEW),
    Cancelled(job=VIEW),
    Result(job_id="j1", image=ImageInfo(index=0, seed=7, media_type="image/png", width=64, height=64,
                                        size_bytes=3)),
    Rejected(error=ErrorInfo(code=ErrorCode.QUEUE_FULL, message="full", hint="later", retryable=True,
                             retry_after=2.0)),
]


@pytest.mark.parametrize("message", ALL_MESSAGES, ids=lambda m: type(m).__name__)
def test_every_message_round_trips(message):
    envelope, blobs = codec.decode(codec.encode(message, ref=42))
    assert envelope.ref == 42
    assert envelope.body == message
    assert blobs == []


def test_images_travel_as_raw_frames_not_inside_the_message():
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256))
    frames = codec.encode(Result(job_id="j", image=ImageInfo(index=0, seed=1, media_type="image/png", width=8,
                                                             height=8, size_bytes=len(png))), 1, [png])
    assert frames[2] == png
    assert png not in frames[1]
    assert codec.decode(frames)[1] == [png]


def test_a_peer_speaking_another_version_is_refused_clearly():
    frames = codec.encode(Ping())
    frames[0] = b"SDCPU/2"
    with pytest.raises(ProtocolError, match="protocol mismatch") as info:
        codec.decode(frames)
    assert info.value.code is ErrorCode.PROTOCOL_MISMATCH


@pytest.mark.parametrize("frames", [
    [], [codec.PROTOCOL_ID], [codec.PROTOCOL_ID, b"\xc1garbage"],
    [codec.PROTOCOL_ID, msgspec.msgpack.encode({"ref": 1, "body": {"type": "Unknown"}})],
    [codec.PROTOCOL_ID, msgspec.msgpack.encode({"ref": 1, "body": {"type": "Submit", "params": {"seed": 1}}})],
])
def test_malformed_frames_raise_protocol_error(frames):
    with pytest.raises(ProtocolError):
        codec.decode(frames)


def test_pickle_payloads_are_not_executed_or_accepted():
    evil = pickle.dumps(Ping)
    with pytest.raises(ProtocolError):
        codec.decode([codec.PROTOCOL_ID, evil])


def test_unknown_fields_from_a_newer_peer_are_ignored():
    raw = msgspec.msgpack.encode({"ref": 3, "body": {"type": "GetJob", "job_id": "j", "added_in_v1_5": True}})
    envelope, _ = codec.decode([codec.PROTOCOL_ID, raw])
    assert envelope.body == GetJob(job_id="j")
