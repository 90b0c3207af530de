"""What every request handler needs, built once per app: settings, model client, validator."""

from __future__ import annotations

import dataclasses

from flask import current_app

from gateway.model_client import ModelServerClient
from gateway.params import ParamValidator
from gateway.settings import GatewaySettings


@dataclasses.dataclass
class Services:
    """The per-app singletons every route uses (``services()`` inside a request)."""

    settings: GatewaySettings
    client: ModelServerClient
    validator: ParamValidator = dataclasses.field(init=False)

    def __post_init__(self):
        self.validator = ParamValidator(self.settings)


def services() -> Services:
    return current_app.extensions["sd"]
