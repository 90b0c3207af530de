"""The MCP tools' outcome: images small enough travel inline, larger ones as links to this service."""

from __future__ import annotations

import types

import pytest
from mcp.server.mcpserver import Image
from mcp.server.mcpserver.exceptions import ToolError

from gateway.mcp_tools import INLINE_IMAGE_BYTES, Caller, Tools
from protocol.messages import ErrorCode, ErrorInfo, GenerationParams, ImageInfo, JobState, JobView
from tests.helpers.processes import run_async

CALLER = Caller(client_id="k", owner="k", request_id="r", base_url="https://sd.example")


def _view(state=JobState.SUCCEEDED, error=None) -> JobView:
    images = [ImageInfo(index=i, seed=5 + i, media_type="image/png", width=64, height=64, size_bytes=1)
              for i in range(2)] if state is JobState.SUCCEEDED else []
    return JobView(job_id="a" * 32, state=state, created_at=0.0, params=GenerationParams(prompt="x", seed=5, n=2),
                   images=images, error=error)


def _tools(sizes: list[int]) -> Tools:
    def fetch(job_id, index, owner):
        assert owner == "k"
        return None, b"\x89PNG" + b"x" * sizes[index]

    return Tools(types.SimpleNamespace(client=types.SimpleNamespace(fetch=fetch)))


def test_small_images_are_inline_and_large_ones_are_links():
    content = run_async(_tools([100, INLINE_IMAGE_BYTES]).outcome, CALLER, _view())
    assert isinstance(content[0], Image) and len(content) == 2  # one inline image, then the summary
    summary = content[-1]
    assert f"https://sd.example/v1/jobs/{'a' * 32}/image?index=1" in summary and '"seeds": [\n  5,\n  6\n ]' in summary


def test_a_job_that_did_not_succeed_is_a_tool_error_with_its_reason():
    failed = _view(JobState.FAILED, ErrorInfo(code=ErrorCode.DEADLINE, message="too late", hint="allow more"))
    with pytest.raises(ToolError, match=r"failed: too late \[deadline\]. allow more"):
        run_async(_tools([]).outcome, CALLER, failed)
