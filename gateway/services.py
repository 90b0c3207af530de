"""What every request handler needs, built once per app: settings, model client, validator."""

from __future__ import annotations

import dataclasses
import threading
import time

from flask import current_app

from gateway.client_options import ClientOptions
from gateway.model_client import ModelServerClient, ModelServerUnavailable, RemoteError
from gateway.params import ParamValidator
from gateway.settings import GatewaySettings
from protocol.messages import ModelEntry, ModelList

# How long a process reuses the model servers' list of models and LoRAs for its own decisions (a
# one-step model's default preset, A1111 titles); the listing routes always ask afresh.
MODEL_LIST_SECONDS = 5.0


@dataclasses.dataclass
class Services:
    """The per-app singletons every route uses (``services()`` inside a request)."""

    settings: GatewaySettings
    client: ModelServerClient
    validator: ParamValidator = dataclasses.field(init=False)
    client_options: ClientOptions = dataclasses.field(init=False)
    _models: tuple[float, ModelList | None] = (float("-inf"), None)
    _models_lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    def __post_init__(self):
        self.validator = ParamValidator(self.settings, model_entry=self.model_entry)
        self.client_options = ClientOptions(self.settings.rate_limit_storage)

    def model_list(self, fresh: bool = False, answering_only: bool = False) -> ModelList:
        """The models and LoRAs the model servers offer (raises when none answers; at once with
        ``answering_only`` when no server answered its latest heartbeat)."""
        with self._models_lock:
            when, known = self._models
        if fresh or known is None or time.monotonic() - when > MODEL_LIST_SECONDS:
            known = self.client.list_models(timeout=2.0, answering_only=answering_only)
            with self._models_lock:
                self._models = (time.monotonic(), known)
        return known

    def model_entry(self, name: str) -> ModelEntry | None:
        """The listed model ``name`` ("" the default one), or None when it is unknown; the last listing
        known when no server answers now (the submit that follows says what is wrong)."""
        try:
            listing = self.model_list(answering_only=True)  # never a wait in front of the request's own call
        except (ModelServerUnavailable, RemoteError):
            with self._models_lock:
                listing = self._models[1]
            if listing is None:
                return None
        return next((m for m in listing.models if (m.name == name if name else m.default)), None)


def services() -> Services:
    return current_app.extensions["sd"]
