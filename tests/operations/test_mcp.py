"""The MCP server (/mcp) through the real service, driven by the official SDK's own client: the tools,
their images, progress notifications, a cancelled call cancelling its job, API keys and isolation,
and bad arguments answered as tool errors."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import time

import httpx2
import pytest
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client
from PIL import Image

from tests.helpers import wait_until
from tests.helpers.processes import run_async

pytestmark = pytest.mark.slow

ALICE, BOB = "alice-key-1", "bob-key-2"


@pytest.fixture(scope="module")
def service(log_dir):
    from tests.operations.conftest import Service

    svc = Service(log_dir, model_env={"FAKE_STEP_SECONDS": "0.05"},
                  gateway_env={"API_KEYS": f"{ALICE},{BOB}", "AUTH_PUBLIC_HEALTH": "true"})
    yield svc
    svc.stop()
    assert "Traceback" not in svc.gateway.log()


def call(service, key: str | None, fn):
    """Run ``fn(client)`` in an MCP session with ``key``."""
    async def main():
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(60)) as http:
            async with Client(streamable_http_client(f"{service.url}/mcp", http_client=http)) as client:
                return await fn(client)

    return run_async(main)


def _text(result) -> dict:
    return json.loads(next(c.text for c in result.content if c.type == "text"))


def test_the_tools_are_listed_with_their_schemas(service):
    async def tools(client):
        return (await client.list_tools()).tools

    listed = {t.name: t for t in call(service, ALICE, tools)}
    assert set(listed) == {"generate_image", "edit_image", "upscale_image", "list_models", "get_job", "cancel_job"}
    schema = listed["generate_image"].input_schema
    assert schema["required"] == ["prompt"] and "preset" in schema["properties"]


def test_generate_returns_the_image_with_progress_and_the_seed(service):
    progress = []

    async def generate(client):
        async def on_progress(done, total, message):
            progress.append((done, total, message))

        return await client.call_tool("generate_image", {"prompt": "a cat", "width": 64, "height": 64, "steps": 20,
                                                         "seed": 7, "n": 2}, progress_callback=on_progress)

    result = call(service, ALICE, generate)
    assert not result.is_error, result.content
    images = [c for c in result.content if c.type == "image"]
    assert len(images) == 2 and images[0].mime_type == "image/png"
    assert Image.open(io.BytesIO(base64.b64decode(images[0].data))).size == (64, 64)
    summary = _text(result)
    assert summary["seeds"][0] == 7 and summary["state"] == "succeeded"
    assert progress and progress[-1][1] == 40 and any("step" in (m or "") for _, _, m in progress)
    steps = [done for done, _, _ in progress]
    assert steps == sorted(steps)


def test_a_job_started_without_waiting_is_followed_cancelled_and_private(service):
    async def start(client):
        return _text(await client.call_tool("generate_image", {"prompt": "a dog", "width": 64, "height": 64,
                                                               "steps": 100, "wait": False}))

    job_id = call(service, ALICE, start)["job_id"]

    async def theirs(client):
        return await client.call_tool("get_job", {"job_id": job_id}), await client.call_tool(
            "cancel_job", {"job_id": job_id})

    seen, cancelled = call(service, BOB, theirs)
    assert seen.is_error and cancelled.is_error and "no job" in seen.content[0].text  # as for an unknown id

    async def mine(client):
        await client.call_tool("cancel_job", {"job_id": job_id})
        return _text(await client.call_tool("get_job", {"job_id": job_id}))

    assert call(service, ALICE, mine)["state"] in ("cancelled", "running")
    wait_until(lambda: service.get(f"/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {ALICE}"})
               .json()["state"] == "cancelled", 10)


def test_a_call_the_client_abandons_cancels_its_job(service):
    auth = {"Authorization": f"Bearer {ALICE}"}

    def cancelled() -> float:
        line = next(line for line in service.get("/metrics", headers=auth).text.splitlines()
                    if line.startswith('sdcpu_jobs_total{outcome="cancelled"}'))
        return float(line.split()[-1])

    before = cancelled()

    async def abandon(client):
        task = asyncio.create_task(client.call_tool("generate_image", {"prompt": "an owl", "width": 64,
                                                                       "height": 64, "steps": 100}))
        await asyncio.sleep(1.5)  # running by now; it would take 5 s
        task.cancel()
        with contextlib.suppress(BaseException):
            await task

    started = time.monotonic()
    call(service, ALICE, abandon)
    wait_until(lambda: cancelled() == before + 1, 10, 0.1, "the abandoned call's job cancelled")
    assert time.monotonic() - started < 4.5


def test_edit_and_upscale_take_base64_images(service):
    source = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(source, "PNG")
    encoded = base64.b64encode(source.getvalue()).decode()

    async def both(client):
        edited = await client.call_tool("edit_image", {"prompt": "a blue square", "image": encoded, "strength": 0.5,
                                                       "steps": 4})
        bigger = await client.call_tool("upscale_image", {"image": "data:image/png;base64," + encoded, "scale": 2})
        return edited, bigger

    edited, bigger = call(service, ALICE, both)
    assert not edited.is_error and not bigger.is_error, (edited.content, bigger.content)
    image = next(c for c in bigger.content if c.type == "image")
    assert Image.open(io.BytesIO(base64.b64decode(image.data))).size == (128, 128)


@pytest.mark.parametrize("tool, arguments, says", [
    ("generate_image", {"prompt": "a cat", "steps": 100000}, "steps"),
    ("generate_image", {"prompt": "a cat", "width": 65}, "width"),
    ("generate_image", {"prompt": "   "}, "prompt"),
    ("generate_image", {"prompt": "a cat", "model": "nope"}, "model"),
    ("edit_image", {"prompt": "x", "image": "not base64!"}, "image"),
    ("edit_image", {"prompt": "x", "image": base64.b64encode(b"not an image").decode(), "wait": True}, ""),
    ("get_job", {"job_id": "../../etc/passwd"}, "no job"),
    ("upscale_image", {"image": "aGVsbG8=", "scale": 100}, "scale"),
])
def test_bad_arguments_are_tool_errors_that_say_what_to_fix(service, tool, arguments, says):
    async def bad(client):
        return await client.call_tool(tool, arguments)

    result = call(service, ALICE, bad)
    assert result.is_error and says in result.content[0].text.lower()


def test_mcp_needs_a_key_and_refuses_a_foreign_browser_origin(service):
    import requests

    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    headers = {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-11-25"}
    assert requests.post(f"{service.url}/mcp", json=body, headers=headers, timeout=10).status_code == 401
    key = {"Authorization": f"Bearer {ALICE}"}
    stream = requests.get(f"{service.url}/mcp", headers={**headers, **key}, timeout=10)
    assert stream.status_code == 405 and stream.headers["Allow"] == "OPTIONS, POST"  # stateless: no GET stream
    text = requests.post(f"{service.url}/mcp", data="hello", headers={**headers, **key}, timeout=10)
    assert text.status_code == 415 and text.json()["hint"]
    foreign = requests.post(f"{service.url}/mcp", json=body, timeout=10,
                            headers={**headers, "Authorization": f"Bearer {ALICE}", "Origin": "https://evil.example"})
    assert foreign.status_code == 403 and foreign.json()["code"] == "forbidden_origin"
    forged = requests.post(f"{service.url}/mcp", json={"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {
        "name": "list_models", "arguments": {}}}, timeout=10,
        headers={**headers, "Authorization": f"Bearer {BOB}",
                 "X-Sdcpu-Mcp-Caller": 'x {"client_id": "", "owner": "", "request_id": "", "base_url": ""}'})
    assert forged.status_code == 200 and "unauthorized" not in forged.text  # the route wrote its own identity
