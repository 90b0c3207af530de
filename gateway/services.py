"""What every request handler needs, built once per app: settings, model client, validator."""

from __future__ import annotations

import dataclasses

from flask import current_app

from gateway.params import ParamValidator
from gateway.settings import GatewaySettings


@dataclasses.dataclass
class Services:
    settings: GatewaySettings
    client: object  # ModelClient or a test double with the same methods
    validator: ParamValidator = dataclasses.field(init=False)

    def __post_init__(self):
        self.validator = ParamValidator(self.settings)


def services() -> Services:
    return current_app.extensions["sd"]
