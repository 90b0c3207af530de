"""Entry point: ``python -m model_server`` runs the server (configuration from the environment, see
README); ``python -m model_server fetch`` downloads what it needs ahead of time (loading/fetch.py)."""

from __future__ import annotations

import logging
import signal
import sys

from model_server.jobs.disk import StorageUnusable
from model_server.logs import configure_logging
from model_server.transport.server import ModelServer
from model_server.settings import ModelServerSettings


def main() -> int:
    configure_logging()
    if sys.argv[1:2] == ["fetch"]:
        from model_server.loading.fetch import main as fetch

        return fetch(sys.argv[2:])
    try:
        settings = ModelServerSettings.from_env()
    except (ValueError, OSError) as exc:
        logging.getLogger(__name__).error("bad configuration: %s", exc)
        return 2
    configure_logging(secrets=(settings.token or "",))
    try:
        # An OUTPUTS_DIR that cannot be written (StorageUnusable) or a socket folder that is not
        # ours alone (ValueError from protocol.transport) is the operator's to fix: exit 2, which
        # run.sh and restart policies do not retry.
        server = ModelServer(settings).start()
    except (StorageUnusable, ValueError) as exc:
        logging.getLogger(__name__).error("bad configuration: %s", exc)
        return 2
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: server.request_shutdown())
    server.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
