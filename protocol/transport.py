"""Where the gateway and the model server meet: a private Unix socket unless told otherwise.

The protocol has no authentication of its own, so anything that can connect can submit past the
gateway's keys, limits and caps. By default the socket is therefore an ``ipc://`` socket in a
runtime directory only this user can enter (mode 0700); TCP on loopback when asked for; and a TCP
bind other machines can reach only with CurveZMQ (``common.curve``), or when an operator says
the network is trusted (MODEL_SERVER_ALLOW_REMOTE=true).
"""

from __future__ import annotations

import ipaddress
import os
import socket
import tempfile
from pathlib import Path

_LOOPBACK_NAMES = {"localhost", "ip6-localhost"}


def runtime_dir(env=None) -> Path:
    env = os.environ if env is None else env
    base = env.get("XDG_RUNTIME_DIR", "").strip()
    return Path(base) / "sd-cpu" if base else Path(tempfile.gettempdir()) / f"sd-cpu-{os.getuid()}"


def expand(value: str) -> str:
    """``{hostname}`` in a bind address or folder becomes this machine's (container's, pod's) name,
    so replicas started from one configuration (``docker compose up --scale``) each get their own."""
    return value.replace("{hostname}", socket.gethostname())


def default_address(env=None) -> str:
    """The address both sides use when none is configured."""
    return f"ipc://{runtime_dir(env) / 'model.sock'}"


def prepare_bind(address: str) -> None:
    """Make the private home of an ipc socket (mode 0700), before binding it."""
    scheme, _, rest = address.partition("://")
    if scheme == "ipc":
        folder = Path(rest).parent
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        if folder == runtime_dir() and folder.stat().st_mode & 0o077:
            folder.chmod(0o700)  # ours, but others could enter it: they would reach the socket


def check_bind(address: str, allow_remote: bool = False, authenticated: bool = False) -> None:
    """Refuse a bind address other machines could reach, unless CURVE guards it or it is allowed;
    raises ValueError."""
    scheme, _, rest = address.partition("://")
    if scheme == "ipc":
        return
    if scheme != "tcp":
        raise ValueError(f"MODEL_SERVER_BIND must be ipc:// or tcp://, got {address!r}")
    host = rest.rsplit(":", 1)[0].strip("[]")
    if not (allow_remote or authenticated) and not _is_loopback(host):
        raise ValueError(f"MODEL_SERVER_BIND {address!r} is reachable from other machines and the ZMQ socket has "
                         "no authentication; set MODEL_SERVER_CURVE_SECRET_KEY and MODEL_SERVER_CURVE_CLIENTS_DIR "
                         "(CurveZMQ), bind to 127.0.0.1 or an ipc:// path, or set MODEL_SERVER_ALLOW_REMOTE=true "
                         "on a network you trust")


def _is_loopback(host: str) -> bool:
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # "*", an interface name or a hostname: may be reachable
