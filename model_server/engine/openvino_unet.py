"""The UNet on the OpenVINO runtime (``SD_BACKEND=openvino``): a drop-in for diffusers' UNet.

Why: OpenVINO's CPU plugin runs the same UNet arithmetic faster than torch's eager kernels
(fused operations and weights repacked once for oneDNN's blocked layouts); docs/performance.md
has the measured ratio per machine. Only the UNet moves, which is nearly all of a job's time: the
text encoder, the VAE, the schedulers and the denoising loop stay diffusers' own, so every
sampler, progress, previews, cancel, interrupt and skip work unchanged.

Memory: the IR is memory-mapped, and the CPU plugin makes its own repacked copy of the weights
when it compiles, so the mapped file's pages are released as the compile reads them (they come
back from the page cache for the next one): the UNet costs one copy, as torch's does, not the
two that optimum-intel's pipeline keeps, even at the compile's peak.

Shapes: compiled static for the latent shape a job needs (static shapes are what the plugin
optimises best), on demand, and one at a time: a second shape's compile would hold a second copy
of the weights. The model's default size is compiled at load, so the first job does not wait.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np
import torch

from model_server.engine.openvino_convert import IR_NAME
from model_server.engine.residency import released_while_read

log = logging.getLogger(__name__)


class OpenVinoUNet(torch.nn.Module):
    """Called like diffusers' UNet2DConditionModel (sample, timestep, encoder_hidden_states) by the
    pipelines; runs the compiled IR. ``config`` and ``dtype`` are the torch UNet's, which the
    pipelines read."""

    def __init__(self, ir_dir: str | Path, like: torch.nn.Module, precision: str, threads: int):
        super().__init__()
        import openvino as ov

        self.config = like.config
        self._dtype = like.dtype
        self._core = ov.Core()
        self._ir = Path(ir_dir) / IR_NAME
        self._bin = os.path.realpath(self._ir.with_suffix(".bin"))
        self._model = self._core.read_model(self._ir)  # mapped, not read
        self._options = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY",
                         "INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1}
        # No CACHE_DIR: importing a cached blob held it in memory beside the compiled model (measured:
        # 5.2 GiB after load instead of 3.5), to save a compile of a few seconds.
        self._shape: tuple | None = None
        self._request = None
        self.compile_seconds: float | None = None
        self.calls = 0

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def compile_for(self, shape: tuple[int, ...]) -> None:
        """Compile for latents of ``shape`` (batch, channels, height, width), replacing the last."""
        if shape == self._shape:
            return
        started = time.monotonic()
        self._request = None  # the previous compiled model and its weights go first
        batch, _, height, width = shape
        self._model.reshape({"sample": list(shape), "timestep": [],
                             "encoder_hidden_states": [batch, 77, self.config.cross_attention_dim]})
        with released_while_read({self._bin}):  # the plugin makes its own copy: the file's pages need not stay
            compiled = self._core.compile_model(self._model, "CPU", self._options)
        self._request = compiled.create_infer_request()
        self._shape = shape
        self.compile_seconds = round(time.monotonic() - started, 2)
        log.info("OpenVINO UNet compiled for %s in %.1f s", shape, self.compile_seconds)

    def report(self) -> dict[str, str | float | None]:
        """The compiled image size (width x height, and the UNet's batch) and its compile time, for /health."""
        if self._shape is None:
            return {}
        batch, _, height, width = self._shape
        return {"openvino_compiled_for": f"{width * 8}x{height * 8}, batch {batch}",
                "openvino_compile_seconds": self.compile_seconds}

    def forward(self, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor, *args,
                return_dict: bool = True, **kwargs):
        if encoder_hidden_states.shape[1] != 77:
            raise ValueError("the OpenVINO UNet takes 77-token prompts")
        self.compile_for(tuple(sample.shape))
        self.calls += 1
        t = timestep.float().reshape(()) if torch.is_tensor(timestep) else torch.tensor(float(timestep))
        outputs = self._request.infer({"sample": sample.float().numpy(), "timestep": np.array(t.item(), dtype=np.float32),
                                       "encoder_hidden_states": encoder_hidden_states.float().numpy()})
        out = torch.from_numpy(next(iter(outputs.values())).copy()).to(sample.dtype)
        return (out,) if not return_dict else _Output(out)


class _Output:
    """What ``return_dict=True`` callers read: ``.sample``."""

    def __init__(self, sample: torch.Tensor):
        self.sample = sample
