"""The ZMQ socket's default home and the refusal of binds other machines could reach."""

from __future__ import annotations

import stat

import pytest

from gateway.settings import GatewaySettings
from model_server.settings import ModelServerSettings
from protocol.transport import default_address, prepare_bind


def test_both_sides_default_to_the_same_private_unix_socket(tmp_path):
    env = {"XDG_RUNTIME_DIR": str(tmp_path)}
    address = default_address(env)
    assert address == f"ipc://{tmp_path}/sd-cpu/model.sock"
    assert ModelServerSettings.from_env(env).bind == GatewaySettings.from_env(env).model_server == address
    prepare_bind(address)
    assert stat.S_IMODE((tmp_path / "sd-cpu").stat().st_mode) == 0o700


@pytest.mark.parametrize("bind", ["tcp://127.0.0.1:5555", "tcp://[::1]:5555", "tcp://localhost:5555",
                                  "ipc:///run/sd-cpu/model.sock"])
def test_loopback_and_unix_sockets_are_accepted(bind):
    assert ModelServerSettings.from_env({"MODEL_SERVER_BIND": bind}).bind == bind


@pytest.mark.parametrize("bind", ["tcp://0.0.0.0:5555", "tcp://*:5555", "tcp://10.1.2.3:5555", "tcp://eth0:5555"])
def test_a_bind_other_machines_could_reach_is_refused_unless_allowed(bind):
    with pytest.raises(ValueError, match="MODEL_SERVER_ALLOW_REMOTE"):
        ModelServerSettings.from_env({"MODEL_SERVER_BIND": bind})
    allowed = ModelServerSettings.from_env({"MODEL_SERVER_BIND": bind, "MODEL_SERVER_ALLOW_REMOTE": "true"})
    assert allowed.bind == bind and allowed.allow_remote
