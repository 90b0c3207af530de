"""Post-training int8 quantization of the OpenVINO UNet (``SD_INT8``), run once in its own process.

The CPU's int8 dot-product units (AVX512-VNNI, AVX-VNNI on laptops, AMX-INT8 on recent Xeons)
do twice the work of bf16 per cycle and four times float32's; nothing else here uses them.
NNCF's post-training quantization puts int8 into the IR with scales calibrated on real UNet
inputs, and OpenVINO's CPU plugin then runs those layers on the integer units:

- ``hybrid`` (the mode optimum-intel publishes for Stable Diffusion): convolutions quantized in
  weights and activations (W8A8); the matmuls' weights compressed to int8 and their activations
  left in bf16/float32, which keeps attention and the text conditioning at full precision.
- ``full``: every convolution and matmul W8A8, with SmoothQuant (NNCF's transformer recipe):
  faster still, and more drift.
- ``weights``: int8 weights only (NNCF's data-free weight compression), computed in bf16/float32:
  half the UNet's memory (SDXL's 5.1 GB bf16 UNet held compiled beside the text encoders is what
  keeps it over an 8 GB machine's budget), no calibration (any family, a low peak while making it)
  and the least drift.

Calibration inputs are recorded from the model's own denoising loop on the shipped prompts
(``calibration_prompts.txt``) at a few steps each, so the scales see the whole timestep range,
at 256x256 by default: NNCF keeps every quantized layer's activations of a call in float32 while
it collects statistics, which at 512x512 took the process to 13 GB; the ranges it needs are those
of normalised activations, which do not depend much on the image size. NNCF is then given the UNet
traced again with float32 weights rather than the bf16 IR, whose weights it decompressed into float32
copies (SD v1.4, hybrid: 6.6 GiB at the peak, against 9.4-9.6 from the IR).
With random weights only numerical drift can be measured here (``bench/drift.py``), not image
quality: that is why neither mode is the default.

    python -m model_server.engine.openvino_int8 MODEL_DIR IR_DIR DEST --mode hybrid|full [--prompts N --steps K
        --size S]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import time
from pathlib import Path

from model_server.engine.openvino_convert import IR_NAME, MARKER, compress_matmul_weights, trace
from model_server.memory import release_memory

PROMPTS = Path(__file__).with_name("calibration_prompts.txt")
MODES = ("hybrid", "full", "weights")
log = logging.getLogger(__name__)


def calibration_prompts(limit: int) -> list[str]:
    lines = [line.strip() for line in PROMPTS.read_text(encoding="utf-8").splitlines()]
    return [line for line in lines if line and not line.startswith("#")][:limit]


def record_inputs(model_dir: str, ir_dir: Path, prompts: list[str], steps: int, size: int) -> list[dict]:
    """The UNet's inputs over ``steps`` denoising steps of each prompt, as the IR takes them."""
    import torch
    from diffusers import StableDiffusionPipeline

    from model_server.engine.openvino_unet import OpenVinoUNet

    pipe = StableDiffusionPipeline.from_pretrained(model_dir, safety_checker=None, requires_safety_checker=False,
                                                   low_cpu_mem_usage=True)
    unet = OpenVinoUNet(ir_dir, pipe.unet, "bf16" if pipe.unet.dtype == torch.bfloat16 else "f32",
                        torch.get_num_threads())
    pipe.unet = unet
    pipe.set_progress_bar_config(disable=True)
    recorded = []
    run = unet.forward

    def recording(sample, timestep, encoder_hidden_states, *args, **kwargs):
        recorded.append({"sample": sample.float().numpy().copy(),
                         "timestep": torch.as_tensor(timestep).float().reshape(()).numpy().copy(),
                         "encoder_hidden_states": encoder_hidden_states.float().numpy().copy(),
                         # an LCM-distilled UNet's guidance embedding
                         **({"timestep_cond": kwargs["timestep_cond"].float().numpy().copy()}
                            if kwargs.get("timestep_cond") is not None else {})})
        return run(sample, timestep, encoder_hidden_states, *args, **kwargs)

    unet.forward = recording
    for i, prompt in enumerate(prompts):
        with torch.inference_mode():
            pipe(prompt, num_inference_steps=steps, guidance_scale=7.5, width=size, height=size, output_type="latent",
                 generator=torch.Generator().manual_seed(i))
    return recorded


def quantize(model_dir: str, ir_dir: Path, dest: Path, mode: str, prompts: int, steps: int, size: int) -> dict:
    import nncf
    import openvino as ov

    started = time.monotonic()
    samples = [] if mode == "weights" else record_inputs(model_dir, ir_dir, calibration_prompts(prompts), steps, size)
    recorded = time.monotonic() - started
    release_memory()  # the recording's pipeline and compiled UNet, before the largest phase
    # Calibrated modes quantize the UNet traced again with float32 weights, not the bf16 IR: NNCF decompressed a
    # float32 copy of every bf16 weight beside the compiled statistics model (measured on SD v1.4's UNet, AMD Zen 4:
    # 9.95 GiB against 7.54; docs/performance.md).
    model = ov.Core().read_model(ir_dir / IR_NAME) if mode == "weights" else trace(model_dir, float32=True)[0]
    if mode == "weights":
        model = compress_matmul_weights(model)
    elif mode == "hybrid":
        model = hybrid(model, samples)
    else:
        model = nncf.quantize(model, nncf.Dataset(samples), subset_size=len(samples),
                              model_type=nncf.ModelType.TRANSFORMER)
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    ov.save_model(model, tmp / IR_NAME, compress_to_fp16=False)
    info = {"mode": mode, "samples": len(samples), "calibration_prompts": prompts, "steps_each": steps, "size": size,
            "recording_seconds": round(recorded, 1), "seconds": round(time.monotonic() - started, 1),
            "nncf": nncf.__version__,
            "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}
    (tmp / MARKER).write_text(json.dumps(info), encoding="utf-8")
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    return info


def hybrid(model, samples: list[dict]):
    """``model`` (an ov.Model) quantized as optimum-intel's hybrid mode leaves Stable Diffusion's UNet: the
    convolutions W8A8, calibrated on ``samples`` (the IR's inputs), the matmuls' weights int8 and their activations
    left in float."""
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters

    matmuls = [op.get_friendly_name() for op in model.get_ops() if op.get_type_name() == "MatMul"
               and any(_has_weights(i.get_source_output().get_node()) for i in op.inputs())]
    model = compress_matmul_weights(model)
    return nncf.quantize(model, nncf.Dataset(samples), subset_size=len(samples), model_type=nncf.ModelType.TRANSFORMER,
                         ignored_scope=nncf.IgnoredScope(names=matmuls, validate=False),
                         advanced_parameters=AdvancedQuantizationParameters(smooth_quant_alpha=-1))


def _has_weights(node) -> bool:
    """A constant, possibly behind a conversion (bf16/fp16 weights are decompressed by a Convert)."""
    while node.get_type_name() == "Convert":
        node = node.input_value(0).get_node()
    return node.get_type_name() == "Constant"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir")
    ap.add_argument("ir_dir", type=Path)
    ap.add_argument("dest", type=Path)
    ap.add_argument("--mode", choices=MODES, default="hybrid")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--size", type=int, default=256, help="calibration image size")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s [int8] %(message)s")
    info = quantize(args.model_dir, args.ir_dir, args.dest, args.mode, args.prompts, args.steps, args.size)
    log.info("quantized the UNet (%s) in %.1f s: %s", args.mode, info["seconds"], args.dest)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
