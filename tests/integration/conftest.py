"""The real service: ``python -m model_server`` (tiny diffusers model) and gunicorn, on loopback."""

from __future__ import annotations

import dataclasses
import json

import pytest
import requests

from tests.helpers import Proc, free_port, start_gateway, start_model_server, wait_ready



@dataclasses.dataclass
class Stack:
    url: str
    model_port: int
    model_server: Proc
    gateway: Proc
    model_env: dict

    def restart_model_server(self, log_dir) -> None:
        self.model_server = start_model_server(log_dir, self.model_port, **self.model_env)


def start_stack(log_dir, tiny_model_dir, gateway_env: dict | None = None, **model_env) -> Stack:
    model_port, http_port = free_port(), free_port()
    model_env = {"SD_MODEL": str(tiny_model_dir), "MODEL_SERVER_PIPELINE": "diffusers", **model_env}
    model_server = start_model_server(log_dir, model_port, **model_env)
    gateway = start_gateway(log_dir, http_port, model_port, MODEL_SERVER_TIMEOUT=3, **(gateway_env or {}))
    stack = Stack(f"http://127.0.0.1:{http_port}", model_port, model_server, gateway, model_env)
    try:
        wait_ready(stack.url, model_server)
    except Exception:
        stop_stack(stack)
        raise
    return stack


def stop_stack(stack: Stack) -> None:
    for proc in (stack.gateway, stack.model_server):
        proc.stop()


def stack_fixture(gateway_env: dict | None = None, loras: bool = False, **model_env):
    """A module-scoped ``stack`` fixture: one real service shared by a test module (``loras``: with
    LORA_DIR holding two tiny random LoRAs, ink and pencil)."""

    @pytest.fixture(scope="module")
    def stack(log_dir, tiny_model_dir, request):
        extra = {"LORA_DIR": request.getfixturevalue("tiny_lora_dir")} if loras else {}
        stack = start_stack(log_dir, tiny_model_dir, gateway_env, **model_env, **extra)
        yield stack
        stop_stack(stack)
        assert "Traceback" not in stack.gateway.log()

    return stack


stack = stack_fixture(MODEL_SERVER_QUEUE_SIZE=2)


def sse_events(response: requests.Response):
    """Parse a Server-Sent Events stream into (event, data) pairs."""
    event, data = "message", []
    for line in response.iter_lines(decode_unicode=True):
        if line == "":
            if data:
                yield event, json.loads("\n".join(data))
            event, data = "message", []
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
