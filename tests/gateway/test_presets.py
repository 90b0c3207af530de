"""Presets at the gateway: defaults from the preset, the request's own values win, listed by the API."""

from __future__ import annotations

import pytest

from gateway.settings import GatewaySettings
from protocol.presets import PRESETS


def submitted(client, fake, **body):
    response = client.post("/v1/jobs", json={"prompt": "a cat", **body})
    assert response.status_code == 202, response.get_json()
    return fake.submitted[-1][0]


@pytest.mark.parametrize("name", list(PRESETS))
def test_a_preset_sets_steps_guidance_and_sampler(client, fake, name):
    p = submitted(client, fake, preset=name)
    preset = PRESETS[name]
    assert (p.preset, p.steps, p.guidance_scale, p.scheduler) == (
        name, preset.steps, preset.guidance_scale, preset.scheduler)


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_field_that_is_a_parameter_reaches_the_model_server(client, fake, name):
    import msgspec

    from protocol.messages import GenerationParams

    p = submitted(client, fake, preset=name)
    shared = set(msgspec.structs.asdict(PRESETS[name])) & set(GenerationParams.__struct_fields__)
    assert shared >= {"steps", "guidance_scale", "scheduler", "deep_cache"}
    assert {f: getattr(p, f) for f in shared} == {f: getattr(PRESETS[name], f) for f in shared}


def test_without_a_preset_the_default_applies_and_is_quality(client, fake):
    p = submitted(client, fake)
    assert (p.preset, p.steps, p.guidance_scale, p.scheduler) == ("quality", 25, 7.5, "default")


def test_the_requests_own_values_win_over_the_presets(client, fake):
    p = submitted(client, fake, preset="fast", steps=6, guidance_scale=1.5)
    assert (p.preset, p.steps, p.guidance_scale, p.scheduler) == ("fast", 6, 1.5, "lcm")


def test_default_preset_and_default_steps_are_configuration(make_client, fake):
    client = make_client(default_preset="balanced", default_steps=30)
    assert submitted(client, fake).preset == "balanced"
    assert submitted(client, fake, preset="quality").steps == 30


def test_an_unknown_preset_is_a_400_that_lists_the_presets(client, fake):
    response = client.post("/v1/jobs", json={"prompt": "a cat", "preset": "ultra"})
    body = response.get_json()
    assert response.status_code == 400 and body["field"] == "preset"
    assert all(name in body["hint"] for name in PRESETS)
    assert fake.submitted == []


def test_an_unknown_default_preset_is_refused_at_start():
    with pytest.raises(ValueError, match="DEFAULT_PRESET"):
        GatewaySettings.from_env({"DEFAULT_PRESET": "ultra"})


def test_presets_are_listed_with_their_settings_and_availability(client, fake):
    fake.unavailable_presets = {"fast": "no LCM-LoRA (SD_LCM_LORA=none)"}
    body = client.get("/v1/presets").get_json()
    assert body["default"] == "quality"
    listed = {p["name"]: p for p in body["presets"]}
    assert list(listed) == list(PRESETS)
    assert listed["quality"]["available"] is True and listed["quality"]["default"] is True
    assert listed["fast"]["available"] is False and "SD_LCM_LORA" in listed["fast"]["unavailable_reason"]
    assert listed["fast"]["lcm_lora"] and listed["fast"]["tiny_vae"] and listed["fast"]["steps"] == 4
    assert listed["balanced"]["deep_cache"] == 3 and listed["quality"]["deep_cache"] == 0
    health = client.get("/health").get_json()
    assert health["presets"] == body["presets"] and health["default_preset"] == "quality"


def test_presets_are_listed_even_when_the_model_server_is_down(client, fake):
    fake.will_be_unreachable()
    body = client.get("/v1/presets").get_json()
    assert {p["available"] for p in body["presets"]} == {None} and "did not answer" in body["note"]


def test_deep_cache_comes_from_the_preset_unless_the_request_sets_it(client, fake):
    assert submitted(client, fake, preset="balanced").deep_cache == 3
    assert submitted(client, fake, preset="balanced", deep_cache=0).deep_cache == 0
    assert submitted(client, fake).deep_cache == 0
    response = client.post("/v1/jobs", json={"prompt": "a cat", "deep_cache": 11})
    assert response.status_code == 400 and response.get_json()["field"] == "deep_cache"


def test_token_merging_is_a_share_from_0_to_0_75(client, fake):
    assert submitted(client, fake).token_merging == 0.0
    assert submitted(client, fake, token_merging=0.5).token_merging == 0.5
    response = client.post("/v1/jobs", json={"prompt": "a cat", "token_merging": 0.9})
    body = response.get_json()
    assert response.status_code == 400 and body["field"] == "token_merging" and "0.75" in body["hint"]
