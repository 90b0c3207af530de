"""The WSGI entry point gunicorn loads: ``gateway.wsgi:app``."""

from gateway import create_app

app = create_app()
