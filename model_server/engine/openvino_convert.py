"""One-time conversion of a model's UNet or VAE decoder to OpenVINO IR, run in its own process.

``openvino.convert_model`` traces the diffusers module under our pinned torch (no optimum-intel at
run time) and ``save_model`` writes the IR. Tracing holds the torch model and the graph at once
(about 3.5 GB from the bf16 copy, 6 GB from float32 weights for SD v1's UNet), so it runs once, in
a short-lived child, and the server only ever maps the result; later starts reuse it.

The IR's inputs are float32 whatever the weights are (the wrapper casts inside the graph): the
denoising loop hands float32 or bf16 tensors and numpy has no bf16. Weights keep the source's
precision (bf16 from the bf16 copy), except float32 weights for bf16 inference, stored as float16
(``compress_to_fp16``: half the file, same speed). For float32 inference they stay float32: the
CPU plugin ran SD v1.4's UNet 25-35% slower from float16-stored weights under the AVX2 cap
(10.5-13.5 s against 13.1-18.4 s a call, four alternating pairs; docs/performance.md).

The UNet for ControlNet jobs (``unet_control``) takes the ControlNets' residuals as inputs too, and a
ControlNet (``controlnet``, SOURCE its own folder) gives them as outputs, each scaled by its input
``conditioning_scale``.

    python -m model_server.engine.openvino_convert SOURCE DEST [--part unet|unet_control|controlnet|vae_decoder]
        [--lora FILE] [--precision bf16|f32]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import time
from pathlib import Path

MARKER = "sd_cpu_openvino.json"
IR_NAMES = {"unet": "unet.xml", "unet_control": "unet_control.xml", "controlnet": "controlnet.xml",
            "vae_decoder": "vae_decoder.xml"}
IR_NAME = IR_NAMES["unet"]
EXAMPLE_LATENT = 32  # the traced example's latent side (256 pixels)
log = logging.getLogger(__name__)


def converted(dest: Path, part: str = "unet") -> bool:
    return (dest / MARKER).exists() and (dest / IR_NAMES[part]).exists()


def residual_shapes(config, batch: int, height: int, width: int) -> list[list[int]]:
    """The shapes of a ControlNet's residuals for a UNet of ``config`` at latents ``height`` x ``width``: one
    after the input convolution, one per resnet of each down block and one per downsampler, then the mid
    block's (what diffusers' ``down_block_additional_residuals`` and ``mid_block_additional_residual`` carry)."""
    channels, layers = config.block_out_channels, config.layers_per_block
    layers = [layers] * len(channels) if isinstance(layers, int) else list(layers)
    shapes, h, w = [[batch, channels[0], height, width]], height, width
    for i, c in enumerate(channels):
        shapes += [[batch, c, h, w]] * layers[i]
        if i < len(channels) - 1:
            h, w = (h + 1) // 2, (w + 1) // 2
            shapes.append([batch, c, h, w])
    return shapes + [[batch, channels[-1], h, w]]


def _text_time(cfg, batch: int = 2) -> tuple[tuple, tuple[str, ...]]:
    """SDXL's added conditioning as traced inputs (the pooled text embedding and the size/crop ids) and their
    names; none for the other families."""
    import torch

    if cfg.addition_embed_type != "text_time":
        return (), ()
    pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
    return ((torch.randn(batch, pooled), torch.tensor([[1024.0, 1024, 0, 0, 1024, 1024]] * batch)),
            ("text_embeds", "time_ids"))


def _added_cond(added: tuple, dtype) -> dict:
    """The traced inputs ``_text_time`` made, as diffusers' ``added_cond_kwargs`` ({} when there are none)."""
    if not added:
        return {}
    return {"added_cond_kwargs": {"text_embeds": added[0].to(dtype), "time_ids": added[1].to(dtype)}}


def _unet(source: str, lora: str | None = None, residuals: bool = False, float32: bool = False):
    """The UNet with float32 inputs and output, and the timestep a float32 scalar (schedulers such as
    Euler use fractional timesteps): (module, example inputs, input names, weights' dtype). With
    ``lora`` (a LoRA's .safetensors file, as the fast preset's LCM-LoRA), that LoRA fused in at weight 1;
    with ``residuals``, a ControlNet's residuals as inputs after the others (``down_0``..., ``mid``)."""
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    # (The LoRA helpers are the same for every family's UNet: the keys are the UNet's own.)
    unet = UNet2DConditionModel.from_pretrained(source, subfolder="unet", low_cpu_mem_usage=True,
                                                **({"torch_dtype": torch.float32} if float32 else {})).eval()
    dtype = unet.dtype
    if lora:
        state, alphas = StableDiffusionPipeline.lora_state_dict(lora)
        StableDiffusionPipeline.load_lora_into_unet(state, alphas, unet=unet, adapter_name="fused")
        unet.fuse_lora(lora_scale=1.0)
        unet.unload_lora()  # the fused weights stay; the adapter's layers go

    class Traced(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.unet = unet

        def forward(self, sample, timestep, encoder_hidden_states, *added):
            extra = {}
            if residuals:  # the last ones: the down residuals, then the mid one
                down, mid, added = added[-count:-1], added[-1], added[:-count]
                extra = {"down_block_additional_residuals": tuple(r.to(dtype) for r in down),
                         "mid_block_additional_residual": mid.to(dtype)}
            if guidance_embedded:  # before the residuals
                extra["timestep_cond"], added = added[-1].to(dtype), added[:-1]
            extra.update(_added_cond(added, dtype))
            out = self.unet(sample.to(dtype), timestep, encoder_hidden_states.to(dtype), return_dict=False,
                            **extra)[0]
            return out.float()

    cfg = unet.config
    # A small example: it fixes the inputs' ranks, not their sizes (the IR is compiled for each job's shape), and
    # tracing at the model's own size held every activation of that size at once (SDXL at 1024x1024: over 24 GB).
    size = EXAMPLE_LATENT
    example = (torch.randn(2, cfg.in_channels, size, size), torch.tensor(999.0),
               torch.randn(2, 77, cfg.cross_attention_dim))
    names = ("sample", "timestep", "encoder_hidden_states")
    added, added_names = _text_time(cfg)
    example, names = example + added, names + added_names
    # An LCM-distilled UNet takes the guidance scale as an embedding (diffusers' pipelines pass it as timestep_cond
    # and run no unconditional half): without it as an input the IR would run as if no guidance were asked.
    guidance_embedded = cfg.get("time_cond_proj_dim")
    if guidance_embedded:
        example, names = example + (torch.randn(2, guidance_embedded),), names + ("timestep_cond",)
    shapes = residual_shapes(cfg, 2, size, size) if residuals else []
    count = len(shapes)
    example += tuple(torch.randn(*shape) for shape in shapes)
    names += tuple(f"down_{i}" for i in range(count - 1)) + (("mid",) if count else ())
    return Traced(), example, names, dtype


def _controlnet(source: str, config: str | None = None):
    """A ControlNet (its own diffusers folder, or a single file with ``config``, a folder holding its config.json):
    the UNet's inputs, the control image (pixels, in [0, 1]) and ``conditioning_scale`` in; its residuals out,
    float32, already scaled."""
    import torch
    from diffusers import ControlNetModel

    net = (ControlNetModel.from_single_file(source, config=config, local_files_only=True) if config
           else ControlNetModel.from_pretrained(source, low_cpu_mem_usage=True)).eval()
    dtype, cfg = net.dtype, net.config

    class Traced(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, sample, timestep, encoder_hidden_states, controlnet_cond, conditioning_scale, *added):
            down, mid = self.net(sample.to(dtype), timestep, encoder_hidden_states.to(dtype),
                                 controlnet_cond.to(dtype), conditioning_scale, return_dict=False,
                                 **_added_cond(added, dtype))
            return (*(r.float() for r in down), mid.float())

    size = EXAMPLE_LATENT
    example = (torch.randn(2, cfg.in_channels, size, size), torch.tensor(999.0),
               torch.randn(2, 77, cfg.cross_attention_dim), torch.rand(2, 3, size * 8, size * 8), torch.tensor(1.0))
    names = ("sample", "timestep", "encoder_hidden_states", "controlnet_cond", "conditioning_scale")
    added, added_names = _text_time(cfg)
    return Traced(), example + added, names + added_names, dtype


def _vae_decoder(source: str):
    """The VAE's decode (post-quant conv and decoder): float32 latents (already divided by the
    scaling factor, as diffusers hands them) in, float32 image in [-1, 1] out."""
    import torch
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(source, subfolder="vae", low_cpu_mem_usage=True).eval()
    dtype = vae.dtype

    class Traced(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.vae = vae

        def forward(self, latent):
            return self.vae.decode(latent.to(dtype), return_dict=False)[0].float()

    return Traced(), (torch.randn(1, vae.config.latent_channels, 32, 32),), ("latent",), dtype


def trace(source: str, part: str = "unet", lora: str | None = None, config: str | None = None,
          float32: bool = False):
    """(``part`` of ``source`` as an in-memory ov.Model, its weights' torch dtype). ``float32``: the UNet's weights
    upcast to float32 first (a bf16 copy's too), which NNCF quantizes without decompressing a copy of each
    (openvino_int8)."""
    import openvino as ov
    import torch

    module, example, names, dtype = (_unet(source, lora, residuals=part == "unet_control", float32=float32)
                                     if part in ("unet", "unet_control") else _controlnet(source, config)
                                     if part == "controlnet" else _vae_decoder(source))
    with torch.no_grad():
        model = ov.convert_model(module, example_input=example)
    for i, name in enumerate(names):
        model.inputs[i].get_tensor().set_names({name})
    return model, dtype


def convert(source: str, dest: Path, part: str = "unet", lora: str | None = None, precision: str = "bf16",
            config: str | None = None, int8_weights: bool = False) -> float:
    import openvino as ov
    import torch

    started = time.monotonic()
    model, dtype = trace(source, part, lora, config)
    if int8_weights:  # SD_INT8's ControlNet jobs: their UNet and ControlNets keep int8 weights too (data-free)
        model = compress_matmul_weights(model)
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    ov.save_model(model, tmp / IR_NAMES[part],
                  compress_to_fp16=dtype == torch.float32 and precision == "bf16" and not int8_weights)
    seconds = round(time.monotonic() - started, 1)
    made = {"source": source, "part": part, "lora": lora, "precision": precision, "int8_weights": int8_weights,
            "weights": str(dtype).removeprefix("torch."),
            "openvino": ov.__version__, "seconds": seconds}
    (tmp / MARKER).write_text(json.dumps(made), encoding="utf-8")
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)  # a crash mid-way leaves no half-written IR behind
    return seconds


def compress_matmul_weights(model):
    """``model`` (an ov.Model) with its matmuls' weights in int8 (INT8_ASYM per output channel, no data): SD_INT8's
    weights mode (openvino_int8) and its ControlNet jobs' IRs. Not the convolutions': the CPU plugin decompresses
    int8 convolution weights to float32 when it compiles (measured on SD 1.4's UNet, AMD Zen 4: 3.99 GiB compiled
    with them, 1.52 without, 1.76 in bf16)."""
    import nncf

    return nncf.compress_weights(model, ignored_scope=nncf.IgnoredScope(types=["Convolution"]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", help="a local diffusers directory (the bf16 copy, or the model itself)")
    ap.add_argument("dest", type=Path)
    ap.add_argument("--part", choices=sorted(IR_NAMES), default="unet")
    ap.add_argument("--lora", help="a LoRA's .safetensors file, fused into the UNet at weight 1")
    ap.add_argument("--precision", choices=("bf16", "f32"), default="bf16", help="the inference precision it is for")
    ap.add_argument("--config", help="a single-file ControlNet's config folder (its config.json)")
    ap.add_argument("--int8-weights", action="store_true", help="int8 weights (NNCF, data-free)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s [openvino-convert] %(message)s")
    seconds = convert(args.source, args.dest, args.part, args.lora, args.precision, args.config, args.int8_weights)
    log.info("converted the %s of %s to OpenVINO IR in %.1f s: %s", args.part, args.source, seconds, args.dest)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
