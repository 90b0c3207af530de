"""Webhooks without the service: where a callback may go (common.webhook_hosts), the signature as the
``standardwebhooks`` package verifies it, the outbox across a restart, and the dispatcher's attempts
against a real loopback receiver (retries, redirects, 410, a receiver that answers a byte a second,
a name that resolves to loopback)."""

from __future__ import annotations

import base64
import json
import os
import socket
import time

import msgspec
import pytest

from common.webhook_hosts import HostPolicy, callback_violation
from model_server.jobs.outputs import JobRecord
from model_server.webhooks.dispatcher import Dispatcher
from model_server.webhooks.outbox import Outbox
from model_server.webhooks.sender import Sender
from model_server.webhooks.signing import secret_bytes, signature
from protocol.messages import ErrorCode, ErrorInfo, GenerationParams, ImageInfo, JobState
from tests.helpers.webhook_receiver import Receiver

SECRET = "whsec_" + base64.b64encode(os.urandom(32)).decode()


@pytest.mark.parametrize("url, allowed", [
    ("https://hooks.example.com/x", True),
    ("http://8.8.8.8/hook", True),  # a public address, under "*"
    ("http://169.254.169.254/latest/meta-data/", False),  # cloud metadata: link-local
    ("http://127.0.0.1:8080/", False), ("http://[::1]/", False), ("http://[::ffff:127.0.0.1]/", False),
    ("http://10.1.2.3/", False), ("http://192.168.0.1/", False), ("http://[fe80::1]/", False),
    ("http://0.0.0.0/", False), ("http://224.0.0.1/", False),
    ("http://2130706433/", False), ("http://0x7f000001/", False),  # 127.0.0.1 to a resolver
    ("http://localhost/", False), ("http://a.localhost/", False),
    ("ftp://hooks.example.com/", False), ("file:///etc/passwd", False), ("gopher://x/", False),
    ("http://user:pw@hooks.example.com/", False), ("http:///nohost", False), ("http://x.com:99999/", False),
    ("http://x.com/a b", False), ("http://x.com/\r\nHost: evil", False),
    ("https://" + "a" * 2100 + ".com/", False),
])
def test_where_a_callback_may_point_under_a_wildcard(url, allowed):
    policy = HostPolicy(("*",))
    assert (policy.refusal(url) is None) is allowed, policy.refusal(url)


def test_listed_names_and_addresses_reach_inside_and_suffixes_do_not():
    policy = HostPolicy(("*.example.com", "receiver.internal", "10.0.0.0/8", "127.0.0.1"))
    assert policy.refusal("http://a.example.com/") is None
    assert policy.refusal("http://example.org/") is not None  # neither listed nor under "*"
    assert policy.refusal("http://receiver.internal:9000/") is None
    assert policy.refusal("http://10.9.8.7/") is None and policy.refusal("http://127.0.0.1:1/") is None
    assert policy.refusal("http://192.168.1.1/") is not None
    # At connect time: a suffix's name resolving inside is refused (DNS rebinding); an exact name is vouched for.
    loopback = __import__("ipaddress").ip_address("127.0.0.2")
    assert "private" in policy.address_refusal("a.example.com", loopback)
    assert policy.address_refusal("receiver.internal", loopback) is None
    assert policy.address_refusal("a.example.com", __import__("ipaddress").ip_address("93.184.216.34")) is None


def test_off_when_nothing_is_listed_and_malformed_entries_stop_the_start():
    assert callback_violation("", HostPolicy(())) is None  # no callback: nothing to refuse
    field, message, hint = callback_violation("https://hooks.example.com/", HostPolicy(()))
    assert field == "callback_url" and "off" in message and "WEBHOOK_ALLOWED_HOSTS" in hint
    for bad in ("http://x.com", "a b", "300.1.1.1/33", "*.", "ex$ample.com"):
        with pytest.raises(ValueError, match="WEBHOOK_ALLOWED_HOSTS"):
            HostPolicy((bad,))


def test_the_signature_is_what_standard_webhooks_verifies():
    from standardwebhooks.webhooks import Webhook

    key, body, now = secret_bytes(SECRET), b'{"type":"job.succeeded"}', int(time.time())
    headers = {"webhook-id": "msg_1", "webhook-timestamp": str(now),
               "webhook-signature": signature(key, "msg_1", now, body)}
    assert Webhook(SECRET).verify(body, headers) == {"type": "job.succeeded"}
    tampered = dict(headers, **{"webhook-id": "msg_2"})
    with pytest.raises(Exception):
        Webhook(SECRET).verify(body, tampered)
    for weak in ("", "whsec_c2hvcnQ=", "not base64 !!", "whsec_" + base64.b64encode(b"x" * 23).decode()):
        with pytest.raises(ValueError, match="whsec_"):
            secret_bytes(weak)


def _record(job_id: str, url: str, state=JobState.SUCCEEDED) -> JobRecord:
    params = GenerationParams(prompt="a cat", seed=7, callback_url=url, task="t1")
    error = ErrorInfo(code=ErrorCode.CANCELLED, message="cancelled") if state is JobState.CANCELLED else None
    return JobRecord(job_id=job_id, state=state, params=params, created_at=time.time() - 5, started_at=time.time() - 4,
                     finished_at=time.time(), error=error,
                     images=[ImageInfo(index=0, seed=7, media_type="image/png", width=64, height=64, size_bytes=10)])


@pytest.fixture
def receiver():
    r = Receiver(SECRET)
    yield r
    r.close()


def _dispatcher(outbox, waits=(0.05, 0.05), timeout=3.0, hosts=("127.0.0.1",)):
    return Dispatcher(outbox, Sender(secret_bytes(SECRET), HostPolicy(hosts), timeout), waits, {})


def _settled(outbox, job_id, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = outbox.status(job_id)
        if status is not None and status.state != "pending":
            return status
        time.sleep(0.02)
    raise AssertionError(f"webhook of {job_id} still pending: {outbox.status(job_id)}")


def test_a_job_end_is_delivered_once_signed_with_retries_under_one_event_id(tmp_path, receiver):
    outbox = Outbox(tmp_path, ttl_seconds=3600)
    dispatcher = _dispatcher(outbox, waits=(0.05, 0.05, 0.05))
    dispatcher.start()
    try:
        job_id = "a" * 32
        outbox.job_ended(_record(job_id, f"{receiver.url}/fail/2"))
        outbox.job_ended(_record(job_id, f"{receiver.url}/fail/2"))  # the same end again: still one event
        status = _settled(outbox, job_id)
    finally:
        dispatcher.stop()
    calls = receiver.calls_to("/fail/2")
    assert status.state == "delivered" and status.attempts == 3 == len(calls) and status.last_status == 200
    assert all(c["verified"] for c in calls)
    assert {c["headers"]["webhook-id"] for c in calls} == {status.event_id}  # one id across retries
    assert len({c["body"] for c in calls}) == 1  # the same bytes every time
    payload = calls[-1]["payload"]
    assert payload["type"] == "job.succeeded" and payload["data"]["id"] == job_id
    assert payload["data"]["images"][0]["url"] == f"/v1/jobs/{job_id}/image?index=0"
    assert payload["data"]["task"] == "t1" and dispatcher.stats["webhooks_delivered"] == 1


def test_what_is_owed_survives_a_restart_and_what_was_delivered_is_not_sent_again(tmp_path, receiver):
    job_id, other = "b" * 32, "c" * 32
    outbox = Outbox(tmp_path, ttl_seconds=3600)
    outbox.job_ended(_record(job_id, f"{receiver.url}/ok", JobState.CANCELLED))  # owed, never sent: the server died
    first = outbox.status(job_id)
    again = Outbox(tmp_path, ttl_seconds=3600)  # the restart
    again.owe_missing([_record(job_id, f"{receiver.url}/ok"), _record(other, f"{receiver.url}/ok")])
    assert again.status(job_id).event_id == first.event_id  # not made twice
    dispatcher = _dispatcher(again)
    dispatcher.start()
    try:
        assert _settled(again, job_id).state == _settled(again, other).state == "delivered"
    finally:
        dispatcher.stop()
    assert json.loads(receiver.calls_to("/ok")[0]["body"])["type"] == "job.cancelled"
    third = Outbox(tmp_path, ttl_seconds=3600)  # another restart: delivered stays delivered
    third.owe_missing([_record(job_id, f"{receiver.url}/ok")])
    assert third.due() == [] and len(receiver.calls_to("/ok")) == 2


def test_settled_deliveries_are_swept_with_the_results_and_unreadable_entries_left_alone(tmp_path):
    clock = [1000.0]
    outbox = Outbox(tmp_path, ttl_seconds=60, clock=lambda: clock[0])
    record = _record("d" * 32, "http://127.0.0.1:9/")
    record.finished_at = 1000.0
    outbox.job_ended(record)
    entry = outbox.due()[0]
    outbox.record(msgspec.structs.replace(entry, state="failed"))
    (tmp_path / "webhooks" / f"{'e' * 32}.json").write_text("{not json")
    clock[0] = 1061.0
    outbox.sweep()
    assert outbox.status("d" * 32) is None and not (tmp_path / "webhooks" / f"{'d' * 32}.json").exists()
    Outbox(tmp_path, ttl_seconds=60)  # a broken file is logged, not fatal


@pytest.mark.parametrize("path, attempts, status, error", [
    ("/redirect", 2, 302, "redirects are not followed"),
    ("/gone", 1, 410, "410"),  # the receiver says never again
])
def test_redirects_are_not_followed_and_gone_stops_retrying(tmp_path, receiver, path, attempts, status, error):
    outbox = Outbox(tmp_path, ttl_seconds=3600)
    dispatcher = _dispatcher(outbox, waits=(0.05,))
    dispatcher.start()
    try:
        outbox.job_ended(_record("f" * 32, receiver.url + path))
        settled = _settled(outbox, "f" * 32)
    finally:
        dispatcher.stop()
    assert settled.state == "failed" and settled.attempts == attempts and settled.last_status == status
    assert error in settled.last_error and dispatcher.stats["webhooks_failed"] == 1
    assert all(not c["path"].startswith("/latest") for c in receiver.calls)  # the redirect's target never asked


def test_a_receiver_answering_a_byte_a_second_is_cut_off_by_the_deadline(tmp_path, receiver):
    outbox = Outbox(None, ttl_seconds=3600)
    dispatcher = _dispatcher(outbox, waits=(), timeout=1.5)
    outbox.job_ended(_record("1" * 32, receiver.url + "/slow"))
    started = time.monotonic()
    dispatcher.attempt(outbox.due()[0])
    assert time.monotonic() - started < 4  # the receiver would take 30 s
    assert "within 1.5 s" in outbox.status("1" * 32).last_error
    assert outbox.status("1" * 32).state == "failed"


def test_a_name_that_resolves_inside_is_refused_at_connect_time(tmp_path, receiver, monkeypatch):
    real = socket.getaddrinfo

    def rebinding(host, *args, **kwargs):  # passed the submit check as a public name, then points at loopback
        return real("127.0.0.1" if host == "hooks.example.com" else host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    outbox = Outbox(None, ttl_seconds=3600)
    dispatcher = _dispatcher(outbox, waits=(), hosts=("*.example.com",))
    outbox.job_ended(_record("2" * 32, f"http://hooks.example.com:{receiver.port}/ok"))
    dispatcher.attempt(outbox.due()[0])
    status = outbox.status("2" * 32)
    assert status.state == "failed" and "127.0.0.1" in status.last_error and receiver.calls == []
    # Listed by its exact name, the operator vouches for where it points: delivered.
    outbox.job_ended(_record("3" * 32, f"http://hooks.example.com:{receiver.port}/ok"))
    _dispatcher(outbox, waits=(), hosts=("hooks.example.com",)).attempt(outbox.due()[0])
    assert outbox.status("3" * 32).state == "delivered" and receiver.calls[0]["verified"]
