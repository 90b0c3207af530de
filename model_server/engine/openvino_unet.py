"""The UNet on the OpenVINO runtime (``SD_BACKEND=openvino``): a drop-in for diffusers' UNet.

Why: OpenVINO's CPU plugin runs the same UNet arithmetic faster than torch's eager kernels
(fused operations and weights repacked once for oneDNN's blocked layouts); docs/performance.md
has the measured ratio per machine. The UNet is nearly all of a job's time; the VAE decoder moves
too (openvino_vae). The text encoder, the schedulers and the denoising loop stay diffusers' own,
so every sampler, progress, previews, cancel, interrupt and skip work unchanged.

Memory and shapes (model_server.engine.openvino_compiled): the UNet costs one copy of its weights,
compiled static for the latent shape a job needs, on demand, one shape at a time. The model's
default size is compiled at load, so the first job does not wait.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from model_server.engine.openvino_compiled import StaticIR
from model_server.engine.openvino_convert import IR_NAME, IR_NAMES, residual_shapes


def load_batch(config) -> int:
    """The UNet's batch for a default request, compiled at load: guidance's two halves, or one where an
    LCM-distilled UNet embeds the guidance scale instead (diffusers then runs no unconditional half)."""
    return 1 if config.get("time_cond_proj_dim") else 2


class OpenVinoUNet(torch.nn.Module):
    """Called like diffusers' UNet2DConditionModel (sample, timestep, encoder_hidden_states, and SDXL's
    ``added_cond_kwargs``) by the pipelines; runs the compiled IR. ``config`` and ``dtype`` are the torch
    UNet's, which the pipelines read."""

    def __init__(self, ir_dir: str | Path, like: torch.nn.Module, precision: str, threads: int,
                 residuals: bool = False, file: str | None = None):
        super().__init__()
        self.config = like.config
        self._dtype = like.dtype
        # ``residuals``: the IR made for ControlNet jobs, which also takes a ControlNet's residuals.
        self._residuals = residuals
        # ``file``: an IR named otherwise (a model published as IR: openvino_ir_model).
        name = file or (IR_NAMES["unet_control"] if residuals else IR_NAME)
        self._ir = StaticIR(Path(ir_dir) / name, precision, threads)
        # Ours takes the timestep as a scalar; optimum-intel's exports one per batch entry (rank 1).
        self._timestep_rank = self._ir.inputs["timestep"][0]
        self.calls = 0
        # SDXL: the pooled text embedding and the size/crop ids are two more inputs.
        self._text_time = like.config.get("addition_embed_type") == "text_time"
        self._pooled = (like.config.projection_class_embeddings_input_dim - 6 * like.config.addition_time_embed_dim
                        if self._text_time else 0)
        # LCM-distilled UNets: the guidance scale's embedding (diffusers' ``timestep_cond``), an input of the IR.
        self._guidance_embedded = like.config.get("time_cond_proj_dim")
        if self._guidance_embedded and "timestep_cond" not in self._ir.inputs:
            raise ValueError("the UNet embeds the guidance scale (LCM-distilled) but its IR takes no timestep_cond")
        if self._text_time:  # what SDXL's pipelines read to check their time ids' width (no weights)
            self.add_embedding = SimpleNamespace(linear_1=SimpleNamespace(
                in_features=like.config.projection_class_embeddings_input_dim))

    @property
    def ir(self) -> StaticIR:
        """The compiled IR (its inputs, its model)."""
        return self._ir

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def compile_for(self, shape: tuple[int, ...]) -> None:
        """Compile for latents of ``shape`` (batch, channels, height, width), replacing the last."""
        batch = shape[0]
        shapes = {"sample": list(shape), "timestep": [batch] * self._timestep_rank,
                  "encoder_hidden_states": [batch, 77, self.config.cross_attention_dim]}
        if self._text_time:
            shapes.update(text_embeds=[batch, self._pooled], time_ids=[batch, 6])
        if self._guidance_embedded:
            shapes["timestep_cond"] = [batch, self._guidance_embedded]
        if self._residuals:
            *down, mid = residual_shapes(self.config, batch, shape[2], shape[3])
            shapes.update({f"down_{i}": s for i, s in enumerate(down)}, mid=mid)
        self._ir.compile_for(shapes)

    def release(self) -> None:
        """Drop the compiled UNet, so another can compile in its memory (the next call compiles it again)."""
        self._ir.release()

    def report(self) -> dict[str, str | float | None]:
        """The compiled image size (width x height, and the UNet's batch) and its compile time, for /health."""
        if self._ir.shapes is None:
            return {}
        batch, _, height, width = self._ir.shapes["sample"]
        return {"openvino_compiled_for": f"{width * 8}x{height * 8}, batch {batch}",
                "openvino_compile_seconds": self._ir.compile_seconds}

    def forward(self, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor, *args,
                return_dict: bool = True, **kwargs):
        self.calls += 1
        inputs = unet_inputs(sample, timestep, encoder_hidden_states,
                             kwargs.get("added_cond_kwargs") if self._text_time else None)
        if self._timestep_rank:
            inputs["timestep"] = np.full(sample.shape[:1], inputs["timestep"])
        if self._guidance_embedded:
            inputs["timestep_cond"] = kwargs["timestep_cond"].float().numpy()
        if self._residuals:
            down = kwargs["down_block_additional_residuals"]
            inputs.update({f"down_{i}": r.float().numpy() for i, r in enumerate(down)},
                          mid=kwargs["mid_block_additional_residual"].float().numpy())
        out = self._ir.infer(inputs)
        out = torch.from_numpy(out).to(sample.dtype)
        return (out,) if not return_dict else _Output(out)


def unet_inputs(sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor, added_cond_kwargs=None) -> dict:
    """What a UNet-shaped IR (the UNet's, a ControlNet's) takes first, as numpy float32: the latents, the timestep
    as a scalar (samplers such as Euler step on fractional ones), the text and, with SDXL's ``added_cond_kwargs``,
    the pooled text embedding and the size/crop ids."""
    t = timestep.float().reshape(()) if torch.is_tensor(timestep) else torch.tensor(float(timestep))
    inputs = {"sample": sample.float().numpy(), "timestep": np.array(t.item(), dtype=np.float32),
              "encoder_hidden_states": encoder_hidden_states.float().numpy()}
    if added_cond_kwargs:
        inputs.update(text_embeds=added_cond_kwargs["text_embeds"].float().numpy(),
                      time_ids=added_cond_kwargs["time_ids"].float().numpy())
    return inputs


class _Output:
    """What ``return_dict=True`` callers read: ``.sample``."""

    def __init__(self, sample: torch.Tensor):
        self.sample = sample
