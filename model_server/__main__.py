"""Entry point: ``python -m model_server`` (configuration from the environment, see README)."""

from __future__ import annotations

import logging
import os
import signal
import sys

from model_server.server import ModelServer
from model_server.settings import ModelServerSettings


def main() -> int:
    logging.basicConfig(
        level=os.environ.get("LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s [model-server] %(name)s: %(message)s", stream=sys.stderr)
    try:
        settings = ModelServerSettings.from_env()
    except ValueError as exc:
        logging.getLogger(__name__).error("bad configuration: %s", exc)
        return 2
    server = ModelServer(settings).start()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: server.request_shutdown())
    server.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
