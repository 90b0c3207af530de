"""Where the model servers are: a fixed list, a DNS name, or a directory of ipc sockets.

``MODEL_SERVER_ADDRESS`` takes one of:

- one address or a comma-separated list (``tcp://a:5555,tcp://b:5555``, ``ipc:///path``);
- ``dns+tcp://NAME:PORT``: every address NAME resolves to, looked up again every refresh. A
  Kubernetes headless Service answers with one address per ready pod; libzmq would connect to the
  first address of a name only, so the gateway resolves it itself and connects to each;
- ``ipc-dir:///DIR``: every ``*.sock`` in DIR, one per model server: how ``docker compose up
  --scale model=N`` replicas are found through their shared volume.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import stat
from pathlib import Path
from typing import Callable

from protocol.transport import check_socket_home

log = logging.getLogger(__name__)
Resolver = Callable[..., list]  # socket.getaddrinfo's shape


class Discovery:
    """A fixed list of addresses (the base: the others override ``addresses``)."""

    dynamic = False

    def __init__(self, addresses: list[str]):
        self._addresses = addresses

    def addresses(self) -> list[str]:
        return list(self._addresses)


class DnsDiscovery(Discovery):
    """``dns+tcp://NAME:PORT``: one ``tcp://IP:PORT`` per address NAME resolves to."""

    dynamic = True

    def __init__(self, name: str, port: int, resolver: Resolver = socket.getaddrinfo):
        super().__init__([])
        self.name, self.port, self._resolve = name, port, resolver

    def addresses(self) -> list[str]:
        try:
            infos = self._resolve(self.name, self.port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            if exc.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)):
                self._addresses = []  # the name has no address: no server is up (a headless Service with no pods)
            else:  # DNS itself failed for a moment: keep the servers we know rather than drop them all
                log.warning("cannot resolve %s (%s); keeping %d known model servers", self.name, exc,
                            len(self._addresses))
            return list(self._addresses)
        found = []
        for info in infos:
            host = info[4][0]
            address = f"tcp://[{host}]:{self.port}" if ipaddress.ip_address(host).version == 6 else \
                f"tcp://{host}:{self.port}"
            if address not in found:
                found.append(address)
        self._addresses = sorted(found)
        return list(self._addresses)


class SocketDirDiscovery(Discovery):
    """``ipc-dir:///DIR``: one ``ipc://`` address per Unix socket ``*.sock`` in DIR."""

    dynamic = True

    def __init__(self, folder: str):
        super().__init__([])
        self.folder = Path(folder)

    def addresses(self) -> list[str]:
        try:
            paths = sorted(self.folder.glob("*.sock"))
        except OSError:
            return []  # not there yet (the first model server makes it)
        return [f"ipc://{p}" for p in paths if _listening(p)]


def _listening(path: Path) -> bool:
    """A socket someone listens on: a replica killed outright leaves its file behind, and a file
    nobody answers at is no server (one restarted under the same name binds it again)."""
    try:
        if not stat.S_ISSOCK(path.stat().st_mode):
            return False
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(0.5)
            probe.connect(str(path))
        return True
    except OSError:  # ECONNREFUSED: a stale file; ENOENT: just removed
        return False


def _ours(folder: Path) -> None:
    """Prompts go to whoever listens on the socket: a folder that another user owns or can write
    could hold theirs (protocol.transport.check_socket_home; the model server makes it if missing)."""
    if folder.exists():
        check_socket_home(folder)


def discovery(spec: str, resolver: Resolver = socket.getaddrinfo) -> Discovery:
    """The discovery that ``spec`` (MODEL_SERVER_ADDRESS) names; raises ValueError for nonsense."""
    spec = spec.strip()
    scheme, _, rest = spec.partition("://")
    if scheme == "dns+tcp":
        name, _, port = rest.rpartition(":")
        if not name or not port.isdigit():
            raise ValueError(f"MODEL_SERVER_ADDRESS {spec!r}: use dns+tcp://NAME:PORT")
        return DnsDiscovery(name.strip("[]"), int(port), resolver)
    if scheme == "ipc-dir":
        if not rest.startswith("/"):
            raise ValueError(f"MODEL_SERVER_ADDRESS {spec!r}: use ipc-dir:///ABSOLUTE/DIR")
        _ours(Path(rest))
        return SocketDirDiscovery(rest)
    addresses = [a.strip() for a in spec.split(",") if a.strip()]
    for address in addresses:
        scheme, _, path = address.partition("://")
        if scheme not in ("tcp", "ipc"):
            raise ValueError(f"MODEL_SERVER_ADDRESS: {address!r} is not tcp://HOST:PORT or ipc:///PATH "
                             "(or use dns+tcp://NAME:PORT, ipc-dir:///DIR)")
        if scheme == "ipc" and not path.startswith("@"):
            _ours(Path(path).parent)
    if not addresses:
        raise ValueError("MODEL_SERVER_ADDRESS is empty")
    return Discovery(addresses)
