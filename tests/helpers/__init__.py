"""Helpers shared by the test tiers: real processes (``processes``) and in-thread model servers
(``servers``). ``from tests.helpers import ...`` gives the process helpers, as before."""

from tests.helpers.processes import *  # noqa: F401,F403
from tests.helpers.processes import ROOT, PYTHON, GUNICORN, Proc, base_env, free_port, start_gateway  # noqa: F401
from tests.helpers.processes import start_model_server, wait_ready, wait_until  # noqa: F401
