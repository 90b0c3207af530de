"""Schemathesis fuzzes every operation in the service's own /openapi.json against the real
processes: valid and invalid inputs alike must never get a 5xx, and every error must come in its
route family's shape (native, OpenAI or A1111)."""

from __future__ import annotations

import pytest
import requests
import schemathesis
from schemathesis import checks
from hypothesis import HealthCheck, settings

from tests.operations.conftest import Service

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fuzz_service(log_dir):
    service = Service(log_dir, model_env={"FAKE_STEP_SECONDS": "0.001", "MODEL_SERVER_QUEUE_SIZE": "64",
                                          "MAX_QUEUED_PER_CLIENT": "0"},
                      gateway_env={"SYNC_TIMEOUT_SECONDS": "30"})
    yield service
    service.stop()
    assert "Traceback" not in service.gateway.log() and "Traceback" not in service.model.log()


@pytest.fixture(scope="module")
def api_schema(fuzz_service):
    return schemathesis.openapi.from_url(fuzz_service.url + "/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


def check_error_shape(path: str, status: int, body) -> None:
    if path.startswith(("/v1/images", "/v1/models")):
        assert set(body["error"]) >= {"message", "type", "param", "code"} and body["error"]["message"]
    elif path == "/mcp" and "jsonrpc" in body:  # the MCP SDK's own errors, JSON-RPC's shape
        assert body["error"]["message"] and isinstance(body["error"]["code"], int)
    elif path.startswith(("/sdapi/", "/controlnet/")):  # A1111, and its ControlNet extension
        if status == 422:
            assert isinstance(body["detail"], list) and body["detail"][0]["msg"]
        else:
            assert set(body) == {"error", "detail", "body", "errors"}
    else:
        assert set(body) >= {"error", "code", "hint"} and body["error"] and body["hint"]


# What the published document promises must hold: the documented statuses, content types and
# response bodies, and the methods a 405 names (Allow).
CONFORMANCE = [checks.not_a_server_error, checks.status_code_conformance, checks.content_type_conformance,
               checks.response_schema_conformance, checks.allow_header_conformance]


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_input_gets_a_5xx_and_errors_have_their_familys_shape(case):
    response = case.call(timeout=60)
    assert response.status_code < 500, (case.method, case.path, response.status_code, response.text[:500])
    case.validate_response(response, checks=CONFORMANCE)
    if response.status_code >= 400:
        check_error_shape(case.path, response.status_code, response.json())
        if response.status_code == 429:
            assert response.headers.get("retry-after")  # schemathesis lower-cases header names


HOSTILE_BODIES = [b'{"prompt":"\xff"}', b'{"prompt":' + b"[" * 2000 + b"]" * 2000 + b"}", b"[" * 5000 + b"]" * 5000,
                  b'{"prompt": "a cat", "n": 3.0, "quality": 13.0}', b'{"prompt": "\u0000"}', b"\xef\xbb\xbf{}"]


@pytest.mark.parametrize("path", ["/generate", "/v1/jobs", "/v1/images/generations", "/sdapi/v1/txt2img",
                                  "/sdapi/v1/img2img", "/sdapi/v1/options"])
def test_hostile_bodies_get_a_client_error_from_the_real_gateway(fuzz_service, path):
    for body in HOSTILE_BODIES:
        response = requests.post(fuzz_service.url + path, data=body, timeout=60,
                                 headers={"Content-Type": "application/json"})
        assert response.status_code < 500, (path, body[:40], response.status_code, response.text[:300])
        if response.status_code >= 400:
            check_error_shape(path, response.status_code, response.json())
