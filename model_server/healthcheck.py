"""Container healthcheck: exit 0 only when the model server answers a Ping and its model is ready.

``python -m model_server.healthcheck [ADDRESS]`` (default: MODEL_SERVER_HEALTH_ADDRESS, or the
bind address with 0.0.0.0 replaced by 127.0.0.1). Speaks the real protocol, so "healthy"
means the IO loop is alive, not just that a port is open.
"""

from __future__ import annotations

import argparse
import os

import zmq

from common.curve import CurveKeys
from protocol import codec
from protocol.transport import default_address, expand
from protocol.messages import ModelState, Ping, Pong


def _default_address() -> str:
    explicit = os.environ.get("MODEL_SERVER_HEALTH_ADDRESS")
    if explicit:
        return explicit
    bind = expand(os.environ.get("MODEL_SERVER_BIND", "").strip()) or default_address()
    return bind.replace("0.0.0.0", "127.0.0.1")


def _curve() -> CurveKeys | None:
    """With CURVE on, the healthcheck connects with the server's own key pair (which it allows)."""
    secret = os.environ.get("MODEL_SERVER_CURVE_SECRET_KEY", "").strip()
    clients = os.environ.get("MODEL_SERVER_CURVE_CLIENTS_DIR", "").strip()
    return CurveKeys.for_server(secret, clients).as_own_client() if secret and clients else None


def check(address: str, timeout_ms: int = 3000, curve: CurveKeys | None = None) -> tuple[bool, str]:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if curve is not None:
        curve.apply_client(sock)
    try:
        sock.connect(address)
        sock.send_multipart(codec.encode(Ping(), ref=1))
        if not sock.poll(timeout_ms):
            return False, f"no answer from {address} within {timeout_ms} ms"
        envelope, _ = codec.decode(sock.recv_multipart())
        pong = envelope.body
        if not isinstance(pong, Pong):
            return False, f"unexpected reply {type(pong).__name__}"
        if pong.model_state is not ModelState.READY:
            detail = f": {pong.error.message}" if pong.error else ""
            return False, f"model {pong.model_state.value}{detail}"
        return True, f"ready ({pong.model})"
    finally:
        sock.close()
        ctx.term()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m model_server.healthcheck",
                                 description="Exit 0 only when the model server answers a Ping and its model is ready.")
    ap.add_argument("address", nargs="?", help="the model server's ZMQ address (default: MODEL_SERVER_HEALTH_ADDRESS, "
                                               "or the bind address)")
    args = ap.parse_args(argv)
    ok, message = check(args.address or _default_address(), curve=_curve())
    print(message)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
