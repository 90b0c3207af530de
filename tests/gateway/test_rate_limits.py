"""Rate limits per client and route class, in each family's error shape, and store failures."""

from __future__ import annotations

import pytest


@pytest.fixture
def limited(make_client):
    return make_client(rate_limit_generate="2/minute", rate_limit_read="5/minute")


def test_generation_is_limited_per_client_with_retry_after(limited, fake):
    for _ in range(2):
        assert limited.post("/v1/jobs", json={"prompt": "a cat"}).status_code == 202
    response = limited.post("/generate", json={"prompt": "a cat"})  # the same class, shared budget
    assert response.status_code == 429
    body = response.get_json()
    assert body["code"] == "rate_limited" and "2 per 1 minute" in body["error"] and body["hint"]
    assert 1 <= int(response.headers["Retry-After"]) <= 61  # the window, rounded up
    other = limited.post("/v1/jobs", json={"prompt": "a cat"}, environ_base={"REMOTE_ADDR": "10.0.0.9"})
    assert other.status_code == 202  # another client has its own budget


def test_reads_have_their_own_budget_and_probes_are_never_limited(limited):
    for _ in range(2):
        limited.post("/v1/jobs", json={"prompt": "a cat"})
    assert limited.get("/v1/jobs/job1").status_code == 200  # generation spent; reads still fine
    for _ in range(4):
        limited.get("/v1/jobs/job1")
    assert limited.get("/v1/jobs/job1").status_code == 429
    for path in ("/health/live", "/health", "/health/ready", "/metrics"):
        assert all(limited.get(path).status_code == 200 for _ in range(10)), path


def test_each_family_gets_its_own_429_shape(limited):
    for _ in range(2):
        limited.post("/v1/jobs", json={"prompt": "a cat"})
    openai = limited.post("/v1/images/generations", json={"prompt": "a cat"})
    assert openai.status_code == 429 and openai.get_json()["error"]["type"] == "rate_limit_error"
    assert openai.headers["Retry-After"]
    a1111 = limited.post("/sdapi/v1/txt2img", json={"prompt": "a cat"})
    assert a1111.status_code == 429 and a1111.get_json()["error"] == "rate_limited"


def test_a_queue_full_429_keeps_the_model_servers_retry_after(limited, fake):
    from protocol.errors import ErrorCode

    fake.will_raise(ErrorCode.QUEUE_FULL, retryable=True, retry_after=42, on="submit")
    assert limited.post("/v1/jobs", json={"prompt": "a cat"}).headers["Retry-After"] == "42"


@pytest.mark.parametrize("mode, status", [("open", 202), ("memory", 202), ("closed", 503)])
def test_an_unreachable_store_fails_as_configured_never_500(make_client, mode, status):
    client = make_client(rate_limit_storage="redis://127.0.0.1:1/0", rate_limit_on_store_error=mode,
                         rate_limit_generate="1/minute")
    response = client.post("/v1/jobs", json={"prompt": "a cat"})
    assert response.status_code == status, response.get_data(as_text=True)
    if mode == "closed":
        assert response.get_json()["code"] == "rate_limit_store_unavailable" and response.headers["Retry-After"]
    if mode == "memory":  # limits still hold, per process
        assert client.post("/v1/jobs", json={"prompt": "a cat"}).status_code == 429


def test_malformed_requests_get_their_400_and_spend_no_generation_budget(limited, fake):
    for body in ({"prompt": ""}, {"prompt": "a cat", "steps": 0}, {"prompt": "a cat", "width": 100}):
        assert limited.post("/v1/jobs", json=body).status_code == 400
    openai = limited.post("/v1/images/generations", json={"prompt": "a cat", "size": "7x7"})
    assert openai.status_code == 400
    assert limited.post("/sdapi/v1/txt2img", json={"prompt": "a cat", "steps": -1}).status_code == 422
    for _ in range(2):  # the whole budget is still there
        assert limited.post("/v1/jobs", json={"prompt": "a cat"}).status_code == 202
    assert limited.post("/v1/jobs", json={"prompt": "a cat"}).status_code == 429


def test_mcp_tool_calls_that_start_work_spend_the_generate_budget_and_the_rest_the_read_one(limited):
    headers = {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-11-25"}

    def rpc(method, params):
        return limited.post("/mcp", json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params},
                            headers=headers)

    generate = {"name": "generate_image", "arguments": {"prompt": "a cat", "wait": False}}
    for _ in range(2):
        assert rpc("tools/call", generate).status_code == 200
    assert rpc("tools/call", generate).status_code == 429  # the generate budget, shared with /v1/jobs
    assert limited.post("/v1/jobs", json={"prompt": "a cat"}).status_code == 429
    assert rpc("tools/list", {}).status_code == 200  # reads have their own budget
    assert rpc("tools/call", {"name": "list_models", "arguments": {}}).status_code == 200
