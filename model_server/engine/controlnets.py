"""ControlNets in a job: loading the ones it names, the pipelines' arguments for its units, and A1111's
control modes.

Only the latest job's ControlNets stay loaded (up to three, in the model's precision): an SD 1.5
ControlNet is 0.7 GB in bf16, and an 8 GB machine cannot keep a shelf of them beside the model. A
job naming others drops the rest first. Each is a torch module, or one whose forward runs its OpenVINO
IR (engine/openvino_control.py) when the job's UNet runs there.

The control modes act on each ControlNet's outputs, as A1111's extension does: "prompt" (my prompt is
more important) weakens the residuals towards the shallow layers (x 0.825 per layer from the deepest);
"control" (ControlNet is more important) does that and steers only the conditional half of a guided
batch, so the unconditional prediction no longer follows the control. "balanced" leaves them alone.
A unit's region (its own mask: A1111's effective region mask) scales its residuals by the mask at each
one's size, so it steers only where the mask is white.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from model_server.errors import redact
from protocol.messages import GenerationParams
from model_server.memory import release_memory
from model_server.pipeline import load_error

log = logging.getLogger(__name__)
SOFT = 0.825  # A1111's per-layer fall-off for soft injection


def config_for(unet, folder: Path) -> Path:
    """The config of a ControlNet made from ``unet`` (what a single-file ControlNet for the loaded model has: the
    file carries none), written once under ``folder``; its directory."""
    from diffusers import ControlNetModel

    key = hashlib.sha256(json.dumps(dict(unet.config), sort_keys=True, default=str).encode()).hexdigest()[:12]
    dest = Path(folder) / "controlnet-config" / key
    if not (dest / "config.json").exists():
        with torch.device("meta"):  # the layers' shapes only, no weights
            net = ControlNetModel.from_unet(unet, load_weights_from_unet=False)
        net.save_config(dest)
    return dest


def load_torch(path: Path, dtype: torch.dtype, config: Callable[[], Path]):
    """A ControlNet from its diffusers folder, or from a single file with ``config()``."""
    from diffusers import ControlNetModel

    if path.is_file():
        return ControlNetModel.from_single_file(str(path), config=str(config()), torch_dtype=dtype,
                                                local_files_only=True)
    return ControlNetModel.from_pretrained(str(path), torch_dtype=dtype)


class LoadedControlNets:
    """The ControlNets of the latest job that had any (see the module)."""

    def __init__(self, dtype: torch.dtype, config: Callable[[], Path], channels_last: bool = False, token: str = ""):
        self._dtype, self._channels_last, self._token = dtype, channels_last, token
        self._config = config  # a single-file ControlNet's config (config_for)
        self._models: dict[str, tuple[str, torch.nn.Module]] = {}  # name -> (engine, module)
        self.names: list[str] = []  # the job's, in unit order (apply)

    def loaded(self) -> set[str]:
        return set(self._models)

    def apply(self, pairs: list[tuple[str, Path]], on_openvino=None) -> None:
        """Load the job's ControlNets (name, folder or single file); the ones it does not name, or on another
        engine, are dropped first. ``on_openvino(path)``: the module running its IR, for a job whose UNet runs there."""
        engine = "openvino" if on_openvino else "torch"
        wanted = dict(pairs)
        dropped = [name for name, (on, _) in self._models.items() if name not in wanted or on != engine]
        for name in dropped:
            _, model = self._models.pop(name)
            getattr(model, "release", lambda: None)()  # an OpenVINO one's compiled copy
        if dropped:
            release_memory()
        for name, folder in wanted.items():
            if name in self._models:
                continue
            if on_openvino:
                self._models[name] = (engine, on_openvino(folder))
                continue
            started = time.monotonic()
            try:
                model = load_torch(folder, self._dtype, self._config)
            except Exception as exc:  # a broken folder fails the job that names it, said plainly
                reason = redact(f"{type(exc).__name__}: {str(exc)[:300]}", self._token)
                raise load_error(f"could not load the ControlNet {name!r}: {reason}",
                                 "Check it in CONTROLNET_DIR (a folder: config.json and its weights; a single file: "
                                 "made for the model's family and size).") from None
            model.eval().requires_grad_(False)
            if self._channels_last:
                model.to(memory_format=torch.channels_last)
            self._models[name] = (engine, model)
            log.info("ControlNet %s loaded in %.1f s", name, time.monotonic() - started)
        self.names = [name for name, _ in pairs]

    def key(self) -> tuple:
        """What the job's ControlNets are, as a pipeline made over them is kept under."""
        return tuple(id(self._models[name][1]) for name in self.names)

    def model(self):
        """What the pipeline takes as ``controlnet``: one model, or several together."""
        engines = {self._models[name][0] for name in self.names}
        nets = [self._models[name][1] for name in self.names]
        if len(nets) == 1:
            return nets[0]
        if engines == {"openvino"}:
            from model_server.engine.openvino_control import together

            return together(nets)
        from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel

        return MultiControlNetModel(nets)


@contextmanager
def control_modes(models: list[torch.nn.Module], modes: list[str], guided: bool, regions: list | None = None):
    """Each unit's control mode, and its region (an L image, white where it acts; None: everywhere), on its
    ControlNet's outputs while the job runs (see the module). A ControlNet named by two units is called twice per
    step, in unit order: its hook takes their modes and regions in turn."""
    regions = regions or [None] * len(modes)
    per_model: dict[int, list[tuple[str, torch.Tensor | None]]] = {}
    for model, mode, region in zip(models, modes, regions):
        weights = None if region is None else torch.from_numpy(
            np.asarray(region.convert("L"), dtype=np.float32) / 255.0)[None, None]
        per_model.setdefault(id(model), []).append((mode, weights))
    handles = []
    if any(mode != "balanced" for mode in modes) or any(region is not None for region in regions):
        for model in {id(m): m for m in models}.values():
            turns = per_model[id(model)]
            calls = [0]

            def hook(module, args, output, turns=turns, calls=calls):
                mode, region = turns[calls[0] % len(turns)]
                calls[0] += 1
                return _regioned(_moded(output, mode, guided), region)

            handles.append(model.register_forward_hook(hook))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _moded(output, mode: str, guided: bool):
    if mode == "balanced":
        return output
    down, mid = output[0], output[1]
    layers = len(down)
    down = [sample * SOFT ** (layers - i) for i, sample in enumerate(down)]
    if mode == "control" and guided:  # the unconditional half (diffusers puts it first) goes uncontrolled
        half = mid.shape[0] // 2
        keep = torch.ones(mid.shape[0], 1, 1, 1, dtype=mid.dtype)
        keep[:half] = 0
        down, mid = [sample * keep for sample in down], mid * keep
    return (down, mid, *output[2:]) if isinstance(output, tuple) else type(output)(down, mid)


def _regioned(output, region: torch.Tensor | None):
    """The residuals scaled by the unit's region at each one's size (A1111's effective region mask)."""
    if region is None:
        return output
    cache: dict = {}

    def scaled(sample: torch.Tensor) -> torch.Tensor:
        size = tuple(sample.shape[-2:])
        if size not in cache:
            cache[size] = torch.nn.functional.interpolate(region, size=size, mode="area").to(sample.dtype)
        return sample * cache[size]

    down, mid = [scaled(sample) for sample in output[0]], scaled(output[1])
    return (down, mid, *output[2:]) if isinstance(output, tuple) else type(output)(down, mid)


def pipeline_inputs(params: GenerationParams, nets: list, mode: str) -> dict:
    """The ControlNet pipelines' arguments for the job's ControlNet units (unit, map): their maps (the inpaint
    module's as its condition: the image with the part to fill at -1), weights and step ranges, at its size."""
    maps = [_condition(made) for _, made in nets]
    units = [unit for unit, _ in nets]
    one = len(units) == 1
    return {"image" if mode == "txt2img" else "control_image": maps[0] if one else maps,
            "controlnet_conditioning_scale": float(units[0].weight) if one else [float(u.weight) for u in units],
            "control_guidance_start": [u.guidance_start for u in units],
            "control_guidance_end": [u.guidance_end for u in units],
            "width": params.width, "height": params.height}


def _condition(made):
    if made.mask is None:
        return made.image
    pixels = np.asarray(made.image.convert("RGB"), dtype=np.float32) / 255.0
    pixels[np.asarray(made.mask.convert("L")) > 127] = -1.0  # the inpaint ControlNet's mark for "fill this"
    return torch.from_numpy(pixels).permute(2, 0, 1).unsqueeze(0)
