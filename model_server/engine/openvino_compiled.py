"""An OpenVINO IR compiled static for one set of input shapes at a time, on demand.

What the OpenVINO UNet and VAE decoder share. Static shapes are what the CPU plugin optimises
best; one at a time, because a second compiled shape would hold a second copy of the weights.
The IR is memory-mapped and the plugin repacks its own copy of the weights when it compiles, so
the file's pages are released as the compile reads them (``released_while_read``): a model costs
one copy of its weights, as torch's does, not the two that optimum-intel's pipeline keeps.

A compiled model keeps its activations' buffers after a call until told to free them, and they are large (SD
v1.4's VAE decoder at 512x512: 0.78 GiB in float32, 0.5 in bf16): each compiled model's buffers are freed when
the model server releases memory between jobs (``memory.on_release``), the UNet's as its denoising ends and the
decoder's after its decode (``release_buffers``), so neither sits beside the other's or beside what follows (an
upscaler, face restoration, the hires fix's second pass), and an idle server holds its weights only.
The next call allocates them again, which costs page faults, not a compile.
"""

from __future__ import annotations

import logging
import os
import time
import weakref
from pathlib import Path

import numpy as np

from model_server import memory
from model_server.engine.residency import released_while_read

log = logging.getLogger(__name__)


class StaticIR:
    """``ir`` (an .xml path) compiled for the CPU in ``precision`` (bf16 or f32) on ``threads``."""

    def __init__(self, ir: Path, precision: str, threads: int):
        import openvino as ov

        self._core = ov.Core()
        self._bin = os.path.realpath(Path(ir).with_suffix(".bin"))
        self.model = self._core.read_model(ir)  # mapped, not read
        # Each input's name -> (rank, numpy type): IRs exported elsewhere (optimum-intel's) take a timestep of rank
        # 1 and token ids as int64 where ours take a float32 scalar; infer casts to what the IR takes.
        self.inputs = {i.get_any_name(): (i.get_partial_shape().rank.get_length(), i.get_element_type().to_dtype())
                       for i in self.model.inputs}
        self.outputs = [o.get_any_name() for o in self.model.outputs]
        self._options = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY",
                         "INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1}
        # No CACHE_DIR: importing a cached blob held it in memory beside the compiled model (measured:
        # 5.2 GiB after load instead of 3.5), to save a compile of a few seconds.
        self.shapes: dict[str, list[int]] | None = None
        self.compile_seconds: float | None = None
        self._compiled = self._request = None
        _COMPILED.add(self)

    def compile_for(self, shapes: dict[str, list[int]]) -> None:
        """Compile for these input shapes (by input name), replacing the last compiled ones."""
        if shapes == self.shapes:
            return
        started = time.monotonic()
        self._compiled = self._request = None  # the previous compiled model and its weights go first
        self.model.reshape(shapes)
        with released_while_read({self._bin}):
            compiled = self._core.compile_model(self.model, "CPU", self._options)
        self._compiled, self._request = compiled, compiled.create_infer_request()
        self.shapes = shapes
        self.compile_seconds = round(time.monotonic() - started, 2)
        log.info("OpenVINO compiled %s for %s in %.1f s", Path(self._bin).stem, shapes, self.compile_seconds)

    def release(self) -> None:
        """Drop the compiled model (its copy of the weights); the next call compiles again."""
        self._compiled = self._request = self.shapes = None

    def release_buffers(self) -> None:
        """Free the compiled model's activation buffers, keeping its weights; the next call allocates them."""
        if self._compiled is not None:
            self._compiled.release_memory()

    def infer(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """The first output for ``inputs`` (compiled for their shapes first if needed), as an owned array."""
        return self.infer_all(inputs)[0]

    def infer_all(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Every output for ``inputs``, in the IR's order, as owned arrays."""
        inputs = {name: _as(value, self.inputs[name][1]) for name, value in inputs.items()}
        self.compile_for({name: list(value.shape) for name, value in inputs.items()})
        return [value.copy() for value in self._request.infer(inputs).values()]


_COMPILED: weakref.WeakSet[StaticIR] = weakref.WeakSet()


def release_buffers() -> None:
    """Free every compiled model's activation buffers (none is running: see the module)."""
    for compiled in list(_COMPILED):
        compiled.release_buffers()


memory.on_release(release_buffers)


def _as(value: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``value`` as the IR's input type: integer inputs (a timestep exported as int64) take the nearest integer, as
    schedulers with fractional timesteps (Euler, DPM++ Karras) would otherwise be truncated."""
    if value.dtype == dtype:
        return value
    if np.issubdtype(dtype, np.integer) and np.issubdtype(value.dtype, np.floating):
        value = np.rint(value)
    return value.astype(dtype)
