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
import stat
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
    """Make the private home of an ipc socket (mode 0700), before binding it, and refuse one that is
    not ours alone (ValueError), as ssh's StrictModes does: whoever can write the folder, or owns
    it, can move our socket away and put theirs in its place."""
    scheme, _, rest = address.partition("://")
    if scheme == "ipc" and not rest.startswith("@"):
        folder = Path(rest).parent
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        check_socket_home(folder)
        if folder == runtime_dir() and folder.stat().st_mode & 0o077:
            folder.chmod(0o700)  # ours, but others could enter it: they would reach the socket


def check_socket_home(folder: Path) -> None:
    """The socket's folder must be a real folder of this user's that no one else can write, in a
    parent that no one else can rename it out of (or a sticky one, as /tmp is)."""
    uid = os.getuid()
    info = folder.lstat()
    fix = ("remove it, or set XDG_RUNTIME_DIR or MODEL_SERVER_BIND to a folder of this user's "
           f"(user id {uid})")
    if not stat.S_ISDIR(info.st_mode):
        raise ValueError(f"the model server's socket folder {folder} is not a folder (a link?): {fix}")
    if info.st_uid != uid:
        raise ValueError(f"the model server's socket folder {folder} belongs to user id {info.st_uid}, who could "
                         f"replace the socket: {fix}")
    if info.st_mode & 0o022:
        raise ValueError(f"the model server's socket folder {folder} can be written by other users "
                         f"(mode {stat.S_IMODE(info.st_mode):o}): chmod go-w it, or {fix}")
    parent = folder.parent.stat()
    if parent.st_uid not in (0, uid) or (parent.st_mode & 0o022 and not parent.st_mode & stat.S_ISVTX):
        raise ValueError(f"the folder above the model server's socket, {folder.parent}, lets other users rename "
                         f"{folder.name} away: {fix}")


def check_bind(address: str, allow_remote: bool = False, authenticated: bool = False) -> None:
    """Refuse a bind address other machines could reach, unless CURVE guards it or it is allowed;
    raises ValueError."""
    scheme, _, rest = address.partition("://")
    if scheme == "ipc" and rest.startswith("@") and not (allow_remote or authenticated):
        raise ValueError(f"MODEL_SERVER_BIND {address!r} is a Linux abstract socket, which has no file permissions: "
                         "any local user could connect to the unauthenticated ZMQ socket; use an ipc:// path (the "
                         "default), or set MODEL_SERVER_CURVE_SECRET_KEY and MODEL_SERVER_CURVE_CLIENTS_DIR "
                         "(CurveZMQ), or MODEL_SERVER_ALLOW_REMOTE=true if every local user is trusted")
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
