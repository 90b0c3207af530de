"""A real ModelServer on an ipc:// socket, in a thread, with a pipeline chosen by the test."""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path

from gateway.model_client import ModelClient
from model_server.fake_pipeline import FakePipeline
from model_server.settings import ModelServerSettings
from model_server.transport.server import ModelServer
from protocol.messages import GenerationParams, ModelState


class FailingPipeline(FakePipeline):
    """Raises for the prompt "boom", otherwise behaves like the fake."""

    def generate(self, params, seed, on_step, stop, init_image=None, mask=None):
        if params.prompt == "boom":
            raise RuntimeError("the UNet exploded")
        return super().generate(params, seed, on_step, stop, init_image, mask)


def params(**kw) -> GenerationParams:
    kw.setdefault("prompt", "a cat")
    kw.setdefault("seed", 1)
    kw.setdefault("steps", 5)
    kw.setdefault("width", 64)
    kw.setdefault("height", 64)
    return GenerationParams(**kw)


@contextlib.contextmanager
def server_starter(folder: Path):
    """Yields ``start(...)``, which runs a ModelServer in a thread on an ipc socket under ``folder``
    and returns it with a client; everything started is stopped on exit."""
    started = []

    def start(load=None, step_seconds: float = 0.01, wait_ready: bool = True,
              **overrides) -> tuple[ModelServer, ModelClient]:
        overrides.setdefault("cache_dir", str(folder / "cache"))  # measured speeds and peaks: the test's own
        settings = ModelServerSettings(bind=f"ipc://{folder}/model-{len(started)}.sock", pipeline="fake",
                                       **overrides)
        load = load or (lambda: FailingPipeline(step_seconds=step_seconds))
        server = ModelServer(settings, load=load).start()
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        started.append((server, thread))
        if wait_ready:  # the worker thread loads the pipeline asynchronously
            deadline = time.monotonic() + 10
            while server.state.model_state is not ModelState.READY and time.monotonic() < deadline:
                time.sleep(0.01)
        client = ModelClient(server.bound_address, timeout=3.0)
        clients.append(client)
        return server, client

    clients: list[ModelClient] = []
    yield start
    for client in clients:
        client.close()
    for server, thread in started:
        server.request_shutdown()
        thread.join(10)
