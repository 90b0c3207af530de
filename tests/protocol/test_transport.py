"""The ZMQ socket's default home and the refusal of binds other machines could reach."""

from __future__ import annotations

import os
import stat
import subprocess

import pytest

from gateway.settings import GatewaySettings
from model_server.settings import ModelServerSettings
from protocol.transport import default_address, prepare_bind
from tests.helpers import PYTHON, ROOT, base_env


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


def _as(folder, uid=None, mode=None):
    folder.mkdir(exist_ok=True)
    if uid is not None:
        os.chown(folder, uid, -1)
    if mode is not None:
        folder.chmod(mode)
    return f"ipc://{folder}/model.sock"


@pytest.mark.skipif(os.getuid() != 0, reason="making a folder another user's needs root")
def test_a_socket_folder_another_user_owns_is_refused_like_ssh_strict_modes(tmp_path):
    with pytest.raises(ValueError, match="belongs to user id 65534"):
        prepare_bind(_as(tmp_path / "theirs", uid=65534, mode=0o700))


@pytest.mark.parametrize("mode", [0o770, 0o777, 0o722])
def test_a_socket_folder_others_can_write_is_refused(tmp_path, mode):
    with pytest.raises(ValueError, match="can be written by other users"):
        prepare_bind(_as(tmp_path / "shared", mode=mode))


def test_a_socket_folder_in_a_parent_others_can_write_is_refused_unless_sticky(tmp_path):
    parent = tmp_path / "open"
    parent.mkdir(mode=0o777)
    parent.chmod(0o777)
    with pytest.raises(ValueError, match="rename"):
        prepare_bind(f"ipc://{parent}/sd-cpu/model.sock")
    parent.chmod(0o1777)  # as /tmp: only the owner may rename what is in it
    prepare_bind(f"ipc://{parent}/sd-cpu/model.sock")


def test_a_link_in_place_of_the_socket_folder_is_refused(tmp_path):
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    (tmp_path / "sd-cpu").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ValueError, match="not a folder"):
        prepare_bind(f"ipc://{tmp_path}/sd-cpu/model.sock")


def test_an_abstract_socket_needs_the_same_opt_in_as_a_remote_bind():
    with pytest.raises(ValueError, match="abstract socket"):
        ModelServerSettings.from_env({"MODEL_SERVER_BIND": "ipc://@sd-cpu"})
    allowed = ModelServerSettings.from_env({"MODEL_SERVER_BIND": "ipc://@sd-cpu", "MODEL_SERVER_ALLOW_REMOTE": "true"})
    assert allowed.bind == "ipc://@sd-cpu"
    prepare_bind(allowed.bind)  # no folder to make


@pytest.mark.skipif(os.getuid() != 0, reason="making a folder another user's needs root")
def test_the_model_server_exits_2_on_a_socket_folder_that_is_not_its_own(tmp_path):
    address = _as(tmp_path / "theirs", uid=65534, mode=0o755)
    done = subprocess.run([PYTHON, "-m", "model_server"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env=base_env(MODEL_SERVER_PIPELINE="fake", MODEL_SERVER_BIND=address, OUTPUTS_DIR=""))
    assert done.returncode == 2 and "belongs to user id 65534" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.skipif(os.getuid() != 0, reason="making a folder another user's needs root")
def test_a_gateway_never_connects_to_a_socket_in_a_folder_another_user_owns(tmp_path):
    from gateway.fleet import discovery

    address = _as(tmp_path / "theirs", uid=65534, mode=0o755)
    for spec in (address, f"ipc-dir://{tmp_path / 'theirs'}"):
        with pytest.raises(ValueError, match="belongs to user id 65534"):
            discovery(spec)
    discovery(f"ipc://{tmp_path}/not-made-yet/model.sock")  # the model server makes it, as its own
