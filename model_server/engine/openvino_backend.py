"""Choosing and setting up the OpenVINO UNet and VAE decoder (``SD_BACKEND``) for a loaded diffusers pipeline.

The result is a second pipeline object over the very same modules with the OpenVINO UNet in
the torch UNet's place (model_server.engine.openvino_unet). The torch UNet stays loaded: it is
mapped from its files and costs no resident memory while unused, and it runs what OpenVINO
cannot (a job's LoRAs, DeepCache, token merging). The fast preset's UNet is a second IR with its
LCM-LoRA fused in (FastUNet). The VAE decoder moves to OpenVINO in the loaded pipeline itself
(model_server.engine.openvino_vae), so it decodes whichever UNet ran.
A conversion that fails leaves that part on torch, said in /health, rather than not starting.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from pathlib import Path

import torch

from model_server import cpu, memory
from model_server.engine.convert import run_once
from model_server.engine.openvino_convert import converted
from model_server.engine.pipeline_objects import pipeline_like
from model_server.engine.residency import MappedWeights
from model_server.families import Family
from model_server.families.detect import json_object
from model_server.loading.progress import LoadProgress
from model_server.pipeline import load_error
from model_server.settings import ModelServerSettings

log = logging.getLogger(__name__)
# Calibration for SD_INT8: prompts from calibration_prompts.txt, denoising steps recorded of each.
CALIBRATION_PROMPTS, CALIBRATION_STEPS = 8, 4


# SD_INT8=auto: a UNet this large keeps its matmuls' weights in int8 on OpenVINO, as optimum-intel's exporter
# compresses every part of a billion parameters or more by default: SDXL's 2.6 billion are 4.8 GiB in bf16, and the
# int8 weights take its 1024x1024 peak under 6.5 GiB (docs/performance.md, with their drift).
INT8_WEIGHTS_FROM = 1_000_000_000


def choose(settings: ModelServerSettings, dtype: torch.dtype, int8: str = "none") -> tuple[bool, str]:
    """(run the UNet on OpenVINO, why), from SD_BACKEND, the model's dtype, this CPU and ``int8``, the UNet's mode
    of SD_INT8 (``int8_mode``)."""
    if settings.backend == "torch":
        return False, "configured"
    if settings.backend == "openvino" or settings.int8 not in ("none", "auto"):
        if importlib.util.find_spec("openvino") is None:
            raise load_error("SD_BACKEND=openvino or SD_INT8 is set but the openvino package is not installed",
                             "Install requirements/model.txt, or set SD_BACKEND=torch and SD_INT8=none.")
        return True, "configured" if settings.backend == "openvino" else f"SD_INT8={settings.int8} runs on it"
    pays, why = cpu.openvino_pays(dtype == torch.bfloat16)
    if not pays and int8 == "weights" and importlib.util.find_spec("openvino") is not None:  # SD_INT8=auto's
        # SDXL in float32 (a CPU without bf16): torch's UNet is 10.3 GB; with int8 weights on OpenVINO a laptop's
        # SDXL-Turbo image took 0.52x the time at 0.60x the peak (docs/performance.md, "A laptop's float32").
        return True, f"a UNet this large runs with int8 weights on OpenVINO ({why} for others)"
    return pays, why


def int8_mode(setting: str, unet) -> tuple[str, str]:
    """(SD_INT8's mode for this model's OpenVINO UNet, why): ``auto`` by the torch ``unet``'s size."""
    if setting != "auto":
        return setting, "configured"
    count = sum(p.numel() for p in unet.parameters())  # mapped weights: counting reads none of them
    if count >= INT8_WEIGHTS_FROM:
        return "weights", f"auto: a UNet of {count / 1e9:.2f} billion parameters keeps int8 weights"
    return "none", f"auto: a UNet of {count / 1e9:.2f} billion parameters stays in its precision"


def int8_ir(folder: str, ir: Path, settings: ModelServerSettings,
            progress: LoadProgress | None = None) -> tuple[Path, dict]:
    """The int8 IR SD_INT8 asks for, quantized once from ``ir``; ``ir`` itself (and why) if that failed."""
    # "-matmuls": the weights mode's IRs made before it left the convolutions alone compile to more than bf16
    dest = ir.with_name(f"{ir.name}-int8-{settings.int8}" + ("-matmuls" if settings.int8 == "weights" else ""))
    if converted(dest):
        return dest, {"openvino_int8": settings.int8}
    cmd = ["model_server.engine.openvino_int8", os.path.realpath(folder), str(ir), str(dest), "--mode", settings.int8,
           "--prompts", str(CALIBRATION_PROMPTS), "--steps", str(CALIBRATION_STEPS)]
    with (progress or LoadProgress()).over() as phase:
        phase.start("quantizing", f"the UNet to int8 ({settings.int8}), once: calibration, then NNCF")
        seconds, failed = run_once(f"quantizing the UNet to int8 ({settings.int8})", cmd, dest, converted)
    if seconds is None:
        return ir, {"openvino_int8": f"none: {failed}"}
    return dest, {"openvino_int8": settings.int8, "int8_quantization_seconds": seconds}


# A conversion's peak over its part's weights on disk (measured: SD v1.4's UNet 2.0x from the bf16 copy, SDXL's
# 2.9x, the source's mapped pages included; docs/performance.md).
CONVERSION_PEAK_FACTOR = 3.0


def _short_of_memory(folder: str, part: str, settings: ModelServerSettings) -> str:
    """Why this machine cannot convert ``part`` now ("" when it can, or when SD_BACKEND=openvino insists):
    a conversion the kernel kills for memory helps no one, and may take the server with it."""
    weights = sum(f.stat().st_size for f in (Path(folder) / part.split("_")[0]).glob("*.safetensors"))
    available = memory.available_bytes()
    need = int(weights * CONVERSION_PEAK_FACTOR)
    if settings.backend == "openvino" or available is None or need <= available:
        return ""
    return (f"converting it needs about {need / 2**30:.1f} GiB and {available / 2**30:.1f} GiB are available "
            "(convert it once on a larger machine with `python -m model_server fetch --convert` and copy "
            "SD_CACHE_DIR/openvino here, or set SD_BACKEND=openvino to try anyway)")


def ir_for(folder: str, settings: ModelServerSettings, precision: str, progress: LoadProgress | None = None,
           part: str = "unet", lora: str | None = None, stop=None,
           config: str | None = None, int8_weights: bool = False) -> tuple[Path | None, dict]:
    """The ``part`` (openvino_convert.IR_NAMES) of ``folder`` as OpenVINO IR for ``precision`` (bf16, f32), the
    UNet with the ``lora`` file fused in if given, converted once in a child process; (None, why) if that
    failed; ConversionStopped when ``stop()`` said so meanwhile. The keys reported are ``openvino_ir``
    for the UNet, ``openvino_vae_ir``, ``openvino_lcm_ir``, ``openvino_control_ir`` and
    ``openvino_controlnet_ir`` for the others (a ControlNet's ``folder`` is its own, or its single file with
    ``config``, the folder of the config it is read with). ``int8_weights``: its matmuls' weights compressed to int8
    (data-free), another IR than the float one."""
    import openvino

    real = os.path.realpath(folder)
    # f32: float32 weights kept as they are (see openvino_convert), so not the IR a bf16 start made.
    keyed = [real, openvino.__version__] + ([] if precision == "bf16" else [precision]) + (
        ["int8-matmul-weights"] if int8_weights else [])
    if part.startswith("unet") and json_object(Path(real) / "unet" / "config.json").get("time_cond_proj_dim"):
        keyed.append("timestep_cond")  # an LCM-distilled UNet's guidance input: IRs made before it had none
    key = hashlib.sha256("\0".join(keyed).encode()).hexdigest()[:12]
    suffix = "" if part == "unet" else f"-{part}"
    if lora:  # a LoRA file replaced in place is another LoRA
        stat = os.stat(lora)
        suffix += "-lora-" + hashlib.sha256(f"{os.path.realpath(lora)}\0{stat.st_size}\0{stat.st_mtime_ns}"
                                            .encode()).hexdigest()[:8]
    dest = Path(settings.cache_dir) / "openvino" / f"{Path(real).name}-{key}{suffix}"
    prefix = {"vae_decoder": "openvino_vae", "unet_control": "openvino_control",
              "controlnet": "openvino_controlnet"}.get(part, "openvino_lcm" if lora else "openvino")
    what = {"unet": "UNet", "unet_control": "UNet for ControlNet jobs", "controlnet": f"ControlNet {Path(real).name}",
            "vae_decoder": "VAE decoder"}[part] + (" with the LCM-LoRA fused in" if lora else "")
    if converted(dest, part):
        return dest, {f"{prefix}_ir": "cached"}
    short = _short_of_memory(real, part, settings)
    if short:
        return None, {"backend_reason" if prefix == "openvino" else prefix: f"the {what} runs on torch: {short}"}
    args = ["model_server.engine.openvino_convert", real, str(dest), "--part", part, "--precision", precision]
    args += ["--lora", lora] if lora else []
    args += ["--config", config] if config else []
    args += ["--int8-weights"] if int8_weights else []
    with (progress or LoadProgress()).over() as phase:
        phase.start("converting", f"the {what} to OpenVINO IR, once")
        seconds, failed = run_once(f"converting the {what} to OpenVINO IR", args, dest, lambda d: converted(d, part),
                                   stop=stop)
    if seconds is None:
        return None, {"backend_reason" if prefix == "openvino" else prefix: f"the {what} runs on torch: {failed}"}
    return dest, {f"{prefix}_ir": "made now", f"{prefix}_conversion_seconds": seconds}


class FastUNet:
    """The fast preset's UNet on OpenVINO: the model's with the LCM-LoRA fused in (at weight 1, as the
    preset runs it), converted once on the first fast job and cached like the model's IR. Fused, the
    fast steps run at OpenVINO's speed, and the torch UNet is not paged in beside the compiled one
    (4.5 GiB peak on SD v1.4, against 2.5). Only one OpenVINO UNet is compiled at a time: switching
    between fast and the other presets recompiles (seconds), where keeping both would hold two copies."""

    def __init__(self, folder: str, settings: ModelServerSettings, precision: str, threads: int):
        self._folder, self._settings, self._precision, self._threads = folder, settings, precision, threads
        self.unet = None
        self.failed = ""
        self.info: dict = {}
        self._ir: Path | None = None  # converted (on disk), not compiled yet

    @property
    def pending(self) -> bool:
        """Its IR is still to be made (a first fast job would wait for the conversion)."""
        return self._ir is None and self.unet is None and not self.failed

    def convert(self, lora_source: str, stop=None, wait_for_lora: bool = False) -> None:
        """Make the fused IR (kept on disk, not compiled: a compiled copy costs the UNet's memory).
        ``failed`` says why when it cannot be made; ConversionStopped when ``stop()`` said so.
        ``wait_for_lora``: a LoRA file not in the cache yet is no failure (ahead of any fast job)."""
        if not self.pending:
            return
        from model_server.engine import preset_parts

        lora = preset_parts.lora_file(lora_source)
        if lora is None:
            if not wait_for_lora:
                self.info = {"openvino_lcm": f"no local file for {lora_source}"}
                self.failed = self.info["openvino_lcm"]
            return
        # With SD_INT8 (SDXL's by default) its matmuls' weights are int8 too, data-free: a fast job compiles it in
        # the main UNet's place, and in bf16 it would take SDXL's 5.1 GB back.
        ir, self.info = ir_for(self._folder, self._settings, self._precision, lora=lora, stop=stop,
                               int8_weights=self._settings.int8 != "none")
        if ir is None:
            self.failed = next(iter(self.info.values()))
        self._ir = ir

    def get(self, like: torch.nn.Module, lora_source: str):
        """The fused UNet, converting it now the first time; None (and ``failed`` says why) if it cannot be."""
        if self.unet is None and not self.failed:
            from model_server.engine.openvino_unet import OpenVinoUNet

            self.convert(lora_source)
            if self._ir is not None:
                self.unet = OpenVinoUNet(self._ir, like, self._precision, self._threads)
        return self.unet

    def release(self) -> None:
        if self.unet is not None:
            self.unet.release()


def vae_decoder(pipe, folder: str, settings: ModelServerSettings, precision: str, threads: int,
                progress: LoadProgress, side: int) -> dict:
    """Put the VAE decoder on OpenVINO in ``pipe`` (so in every pipeline made from its modules, whichever
    UNet runs), compiled for the default size; what to report in /health. The torch VAE stays for
    ``encode`` and when the conversion failed."""
    ir, info = ir_for(folder, settings, precision, progress, "vae_decoder")
    if ir is None:
        return info
    from model_server.engine.openvino_vae import OpenVinoVae

    MappedWeights(folder).release("vae")  # the torch decoder's pages are not read again
    vae = OpenVinoVae.of(ir, pipe.vae, precision, threads)
    if not settings.vae_tile_above or side <= settings.vae_tile_above:  # larger ones decode in torch's tiles
        progress.start("compiling", f"the OpenVINO VAE decoder for {side}x{side}")
        vae.compile_for(side, side)
    pipe.register_modules(vae=vae)
    return {"openvino_vae": "decode", **info}


def attach(pipe, folder: str, settings: ModelServerSettings, dtype: torch.dtype, threads: int, why: str,
           progress: LoadProgress, side: int, family: Family) -> tuple[object | None, FastUNet | None, dict]:
    """The pipeline (``family``'s class) whose UNet runs on OpenVINO, chosen (``choose``) for ``why``,
    compiled for ``side`` x ``side`` (the model's default size), the fast preset's UNet (converted on
    first use), and what to report in /health; (None, None, the reason) if the UNet stays on torch after all."""
    precision = "bf16" if dtype == torch.bfloat16 else "f32"
    ir, info = ir_for(folder, settings, precision, progress)
    if ir is None:
        return None, None, {"backend": "torch", **info}
    if settings.int8 != "none":
        ir, quantized = int8_ir(folder, ir, settings, progress)
        info.update(quantized)
    from model_server.engine.openvino_unet import OpenVinoUNet, load_batch

    # The torch UNet only runs what OpenVINO cannot: its mapped pages wait in the page cache till
    # then, rather than sit beside the compiled copy (before compiling, to keep the peak down too).
    MappedWeights(folder).release("unet")
    unet = OpenVinoUNet(ir, pipe.unet, precision, threads)
    progress.start("compiling", f"the OpenVINO UNet for {side}x{side}")
    # The default request's shape.
    unet.compile_for((load_batch(pipe.unet.config), pipe.unet.config.in_channels, side // 8, side // 8))
    info.update(vae_decoder(pipe, folder, settings, precision, threads, progress, side))
    ov_pipe = pipeline_like(family.pipelines["txt2img"], pipe, unet=unet)
    return ov_pipe, FastUNet(folder, settings, precision, threads), {
        "backend": "openvino", "backend_reason": why, "openvino_precision": precision, **info,
        "openvino_runs_on_torch": "LoRAs, deep_cache, token_merging, tiling, inpainting checkpoints"}
