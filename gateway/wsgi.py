"""The WSGI entry point gunicorn loads: ``gateway.wsgi:app``."""

from gateway import create_app
from gateway.logs import configure_logging

configure_logging()
app = create_app()
