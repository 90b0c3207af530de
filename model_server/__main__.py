"""Entry point: ``python -m model_server`` (configuration from the environment, see README)."""

from __future__ import annotations

import logging
import signal

from model_server.logs import configure_logging
from model_server.transport.server import ModelServer
from model_server.settings import ModelServerSettings


def main() -> int:
    configure_logging()
    try:
        settings = ModelServerSettings.from_env()
    except (ValueError, OSError) as exc:
        logging.getLogger(__name__).error("bad configuration: %s", exc)
        return 2
    configure_logging(secrets=(settings.token or "",))
    server = ModelServer(settings).start()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: server.request_shutdown())
    server.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
