"""docs/configuration.md is generated from the settings' declarations and must match them."""

from __future__ import annotations

import dataclasses
import runpy

from common.limits import RequestLimits
from gateway.settings import GatewaySettings, ServingSettings
from model_server.settings import ModelServerSettings
from tests.helpers import ROOT


def test_the_committed_reference_is_what_the_settings_declare():
    generated = runpy.run_path(str(ROOT / "scripts" / "configuration_reference.py"))["render"]()
    assert (ROOT / "docs" / "configuration.md").read_text() == generated, (
        "docs/configuration.md is stale: run python scripts/configuration_reference.py > docs/configuration.md")


def test_every_setting_is_read_from_a_documented_variable():
    for cls in (RequestLimits, GatewaySettings, ServingSettings, ModelServerSettings):
        for field in dataclasses.fields(cls):
            if field.name == "min_size":
                continue  # the protocol's constant, not configurable
            assert field.metadata.get("env") and field.metadata.get("doc"), (cls.__name__, field.name)


def test_both_processes_read_the_limits_from_the_same_variables():
    env = {"MAX_STEPS": "40", "MAX_WIDTH": "768", "MAX_IMAGES_PER_REQUEST": "2"}
    assert GatewaySettings.from_env(env).limits == ModelServerSettings.from_env(env).limits
    assert ModelServerSettings.from_env(env).limits.max_steps == 40
