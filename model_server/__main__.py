"""Entry point: ``python -m model_server`` runs the server (configuration from the environment, see
README); ``python -m model_server fetch`` downloads what it needs ahead of time (loading/fetch.py)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from model_server.jobs.disk import StorageUnusable
from model_server.logs import configure_logging
from model_server.transport.server import ModelServer
from model_server.settings import ModelServerSettings


_DESCRIPTION = """\
Runs a model server: it loads the model once (SD_MODEL, default CompVis/stable-diffusion-v1-4, a
download of about 4 GB on first use), binds the ZeroMQ socket a gateway connects to
(MODEL_SERVER_BIND), and runs jobs one at a time. Every setting comes from the environment:
docs/configuration.md lists them. scripts/run.sh starts it with a gateway.

commands:
  (none)   run the model server
  fetch    download everything the configuration needs, then exit (python -m model_server fetch --help)
"""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["fetch"]:
        configure_logging()
        from model_server.loading.fetch import main as fetch

        return fetch(argv[1:])
    # --help (or any argument) answers here, before anything is loaded or bound.
    argparse.ArgumentParser(prog="python -m model_server", description=_DESCRIPTION,
                            formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(argv)
    configure_logging()
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
