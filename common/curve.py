"""CurveZMQ for the gateway <-> model server link across machines: who holds which key.

The protocol itself has no authentication: anything that reaches a model server's socket can
submit past the gateway's keys, limits and caps. Across machines the link therefore uses CURVE
(libzmq's encryption and authentication, RFC 26): each model server has a key pair and accepts
only the client public keys in a directory; each gateway has its own key pair and the servers'
public key. Keys are the files ``zmq.auth`` writes (``python -m common.curve DIR`` makes a set),
so they mount as they are from Kubernetes Secrets or compose secrets.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import zmq
import zmq.auth


@dataclasses.dataclass(frozen=True)
class CurveKeys:
    """One side's CURVE keys: its own pair, and the server's public key (a client) or the
    directory of allowed client keys (a server)."""

    public: bytes
    secret: bytes
    server_public: bytes = b""  # clients: the model servers' public key
    clients_dir: str = ""  # servers: where the allowed clients' public keys are

    @classmethod
    def for_client(cls, secret_file: str, server_public_file: str) -> "CurveKeys":
        public, secret = _pair(secret_file)
        server_public, _ = zmq.auth.load_certificate(_existing(server_public_file))
        return cls(public, secret, server_public=server_public)

    @classmethod
    def for_server(cls, secret_file: str, clients_dir: str) -> "CurveKeys":
        public, secret = _pair(secret_file)
        folder = Path(clients_dir)
        if not folder.is_dir() or not any(folder.glob("*.key")):
            raise ValueError(f"{clients_dir}: no client public keys (*.key) to allow; "
                             "copy each gateway's public key there (python -m common.curve makes them)")
        return cls(public, secret, clients_dir=str(folder))

    def apply_client(self, sock: zmq.Socket) -> None:
        sock.curve_secretkey, sock.curve_publickey, sock.curve_serverkey = self.secret, self.public, self.server_public

    def apply_server(self, sock: zmq.Socket) -> None:
        sock.curve_secretkey, sock.curve_publickey, sock.curve_server = self.secret, self.public, True

    def allows(self, domain: str, client_public: bytes) -> bool:
        """The ZAP handler's question for each handshake: is this client's key in the directory
        (read again each time, so a key added or removed counts without a restart), or the server's
        own (its healthcheck connects with the server's pair)?"""
        if client_public == self.public:
            return True
        try:
            return client_public in zmq.auth.load_certificates(self.clients_dir)
        except OSError:
            return False

    def as_own_client(self) -> "CurveKeys":
        """The server's pair used to connect to itself (the container healthcheck)."""
        return CurveKeys(self.public, self.secret, server_public=self.public)


def _existing(path: str) -> str:
    if not Path(path).is_file():
        raise ValueError(f"CURVE key file {path} does not exist (python -m common.curve DIR makes a set)")
    return path


def _pair(secret_file: str) -> tuple[bytes, bytes]:
    public, secret = zmq.auth.load_certificate(_existing(secret_file))
    if not secret:
        raise ValueError(f"{secret_file} holds no secret key; give the .key_secret file, not the public .key")
    return public, secret


def make_keys(folder: Path) -> list[Path]:
    """A server pair and a gateway pair, with the gateway's public key allowed by the server:
    ``server.key_secret`` (the model servers), ``server.key`` and ``gateway.key_secret`` (the
    gateways), ``clients/gateway.key`` (the model servers' allowed clients)."""
    clients = folder / "clients"
    clients.mkdir(parents=True, exist_ok=True)
    zmq.auth.create_certificates(str(folder), "server")
    public, _ = zmq.auth.create_certificates(str(folder), "gateway")
    allowed = clients / "gateway.key"
    allowed.write_bytes(Path(public).read_bytes())
    for secret in folder.glob("*.key_secret"):
        secret.chmod(0o600)
    return sorted(p for p in folder.rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m common.curve", description="Writes a CurveZMQ key pair for the "
                                 "model server and one for the gateway into DIR, and the gateway's public key into "
                                 "DIR/clients (MODEL_SERVER_CURVE_CLIENTS_DIR); docs/operations.md, 'Scale out'.")
    ap.add_argument("dir", type=Path, metavar="DIR", help="the folder to write the keys into (made if missing)")
    for path in make_keys(ap.parse_args(argv).dir):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
