"""ControlNet jobs on OpenVINO: the model's UNet made once more with the ControlNets' residuals as inputs,
and each ControlNet made into IR of its own, both converted once, on the first job that needs them, in a
child process, cached like the model's IR (openvino_backend.ir_for).

Why: a ControlNet job on torch pays torch's step (1.8x OpenVINO's for SD 1.5 on the bench machine) plus
the ControlNet; on OpenVINO both parts run at OpenVINO's speed (docs/performance.md, "Control").

The pipelines check that their ``controlnet`` is a diffusers ControlNetModel, and read its config, dtype
and device: each ControlNet here is one (a subclass), built on the meta device (no weights, no memory),
saying it is on the CPU, with its forward running the compiled IR, so the control modes' hooks
(engine/controlnets.py) apply to it as to a torch one.
Only one UNet is compiled at a time: the control one replaces the plain one while ControlNet jobs run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

from model_server.engine.openvino_backend import ir_for
from model_server.engine.openvino_compiled import StaticIR
from model_server.engine.openvino_convert import IR_NAMES
from model_server.engine.openvino_unet import OpenVinoUNet, unet_inputs
from model_server.settings import ModelServerSettings


class ControlOnOpenVino:
    """The control UNet and the ControlNets' IR for one loaded model (see the module)."""

    def __init__(self, folder: str, settings: ModelServerSettings, precision: str, threads: int,
                 config: Callable[[], Path]):
        self._folder, self._settings, self._precision, self._threads = folder, settings, precision, threads
        self._config = config  # a single-file ControlNet's config (controlnets.config_for)
        self.unet: OpenVinoUNet | None = None
        self.failed = ""  # why the control UNet cannot be made (its jobs run on torch)
        self.net_failed: dict[str, str] = {}  # ControlNet name -> why it has no IR (jobs naming it run on torch)
        self.info: dict = {}
        self._ir: Path | None = None
        self._nets: dict[Path, Path] = {}  # a ControlNet's folder -> its IR
        # With SD_INT8 the control UNet and the ControlNets keep their matmuls' weights in int8 (data-free, whatever
        # the mode: the calibrated modes' samples are the plain UNet's; openvino_convert says why not the
        # convolutions').
        self.int8_weights = settings.int8 != "none"

    @property
    def pending(self) -> bool:
        return self._ir is None and not self.failed

    def prepare_unet(self, report, stop) -> None:
        """Convert the control UNet once (about as long as the model's own conversion)."""
        if not self.pending:
            return
        report("converting the UNet for ControlNet jobs to OpenVINO, once: a minute or two; later ones start at once")
        self._ir, info = ir_for(self._folder, self._settings, self._precision, part="unet_control", stop=stop,
                                int8_weights=self.int8_weights)
        self.info.update(info)
        if self._ir is None:
            self.failed = next(iter(info.values()))

    def prepare_net(self, name: str, folder: Path, report, stop) -> None:
        """Convert the ControlNet in ``folder`` once; ``net_failed`` says why when it cannot be."""
        if folder in self._nets or name in self.net_failed:
            return
        report(f"converting the ControlNet {name} to OpenVINO, once")
        config = str(self._config()) if folder.is_file() else None
        ir, info = ir_for(str(folder), self._settings, self._precision, part="controlnet", stop=stop, config=config,
                          int8_weights=self.int8_weights)
        if ir is None:
            self.net_failed[name] = next(iter(info.values()))
            return
        self._nets[folder] = ir

    def get_unet(self, like: torch.nn.Module) -> OpenVinoUNet:
        if self.unet is None:
            self.unet = OpenVinoUNet(self._ir, like, self._precision, self._threads, residuals=True)
        return self.unet

    def net(self, folder: Path):
        """The ControlNet in ``folder`` as the pipelines take one, running its compiled IR."""
        shell_class = _shell_class()
        with torch.device("meta"):
            config = self._config() if folder.is_file() else folder  # a single file's: the one it was read with
            shell = shell_class.from_config(shell_class.load_config(str(config)))
        shell.ir = StaticIR(self._nets[folder] / IR_NAMES["controlnet"], self._precision, self._threads)
        shell.run_dtype = torch.bfloat16 if self._precision == "bf16" else torch.float32
        return shell

    def release(self) -> None:
        """Drop the compiled control UNet (another UNet compiles in its memory)."""
        if self.unet is not None:
            self.unet.release()


def together(nets: list):
    """Several of them as the pipelines take several: diffusers' MultiControlNetModel, saying it is on the CPU
    (its parameters, the shells', are on the meta device)."""
    from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel

    class OpenVinoControlNets(MultiControlNetModel):
        @property
        def device(self) -> torch.device:
            return torch.device("cpu")

        @property
        def dtype(self) -> torch.dtype:
            return nets[0].dtype

    return OpenVinoControlNets(nets)


_SHELL = None


def _shell_class():
    """diffusers' ControlNetModel, made to run an IR (one class, made when first needed: diffusers loads late)."""
    global _SHELL
    if _SHELL is not None:
        return _SHELL
    from diffusers import ControlNetModel

    class OpenVinoControlNet(ControlNetModel):
        ir: StaticIR
        run_dtype: torch.dtype

        @property
        def device(self) -> torch.device:
            return torch.device("cpu")

        @property
        def dtype(self) -> torch.dtype:
            return self.run_dtype

        def release(self) -> None:
            self.ir.release()

        def forward(self, sample, timestep, encoder_hidden_states, controlnet_cond, conditioning_scale=1.0, *args,
                    added_cond_kwargs=None, return_dict=True, **kwargs):
            text_time = self.config.addition_embed_type == "text_time"
            inputs = unet_inputs(sample, timestep, encoder_hidden_states, added_cond_kwargs if text_time else None)
            inputs.update(controlnet_cond=controlnet_cond.float().numpy(),
                          conditioning_scale=np.array(float(conditioning_scale), dtype=np.float32))
            *down, mid = (torch.from_numpy(out).to(sample.dtype) for out in self.ir.infer_all(inputs))
            return tuple(down), mid

    _SHELL = OpenVinoControlNet
    return _SHELL
