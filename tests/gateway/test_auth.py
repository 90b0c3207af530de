"""Optional API keys: Bearer, Basic, X-API-Key and the page's cookie; public liveness."""

from __future__ import annotations

import base64

import pytest

KEY = "s3cret-key"


@pytest.fixture
def locked(make_client):
    return make_client(api_keys=(KEY, "other-key"))


def basic(user: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_without_keys_everything_is_open(client):
    assert client.post("/v1/jobs", json={"prompt": "a cat"}).status_code == 202


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Bearer "},
                                     basic("u", "wrong"), {"Authorization": "Basic !!!"}])
def test_a_missing_or_wrong_key_is_401_with_a_hint(locked, fake, headers):
    response = locked.post("/v1/jobs", json={"prompt": "a cat"}, headers=headers)
    assert response.status_code == 401 and response.headers["WWW-Authenticate"].startswith("Bearer")
    assert response.get_json()["code"] == "unauthorized" and "Bearer" in response.get_json()["hint"]
    assert fake.submitted == []


@pytest.mark.parametrize("headers", [{"Authorization": f"Bearer {KEY}"}, basic("anyone", KEY), basic(KEY, ""),
                                     {"X-API-Key": KEY}, "cookie"])
def test_a_valid_key_is_accepted_in_every_supported_place(locked, fake, headers):
    if headers == "cookie":  # what the web page sets, for EventSource and <img>
        locked.set_cookie("sd_api_key", KEY)
        headers = {}
    assert locked.post("/v1/jobs", json={"prompt": "a cat"}, headers=headers).status_code == 202
    assert fake.submitted[0][1].startswith("key:")  # the client is its key's fingerprint
    assert KEY not in fake.submitted[0][1]


def test_liveness_and_the_page_stay_public_but_health_and_metrics_need_a_key(locked, make_client):
    assert locked.get("/health/live").status_code == 200
    assert locked.get("/").status_code == 200
    assert locked.get("/openapi.json").status_code == 200
    for path in ("/health", "/health/ready", "/metrics"):
        assert locked.get(path).status_code == 401
        assert locked.get(path, headers={"X-API-Key": KEY}).status_code == 200
    public = make_client(api_keys=(KEY,), auth_public_health=True)
    assert public.get("/health").status_code == 200 and public.get("/metrics").status_code == 200


def test_each_family_gets_its_own_401_shape(locked):
    openai = locked.post("/v1/images/generations", json={"prompt": "a cat"})
    assert openai.status_code == 401 and openai.get_json()["error"]["type"] == "authentication_error"
    a1111 = locked.get("/sdapi/v1/progress")
    assert a1111.status_code == 401 and a1111.headers["WWW-Authenticate"].startswith("Basic")
    assert set(a1111.get_json()) == {"error", "detail", "body", "errors"}


def test_keys_come_from_a_file_too(tmp_path):
    from gateway.settings import GatewaySettings

    (tmp_path / "keys").write_text("# team keys\nalpha\n\nbeta\n")
    settings = GatewaySettings.from_env({"API_KEYS": "gamma", "API_KEYS_FILE": str(tmp_path / "keys")})
    assert settings.api_keys == ("gamma", "alpha", "beta")
    assert "alpha" not in repr(settings)
