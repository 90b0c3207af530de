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

    python -m model_server.engine.openvino_convert SOURCE DEST [--part unet|vae_decoder] [--lora FILE]
        [--precision bf16|f32]
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
IR_NAMES = {"unet": "unet.xml", "vae_decoder": "vae_decoder.xml"}
IR_NAME = IR_NAMES["unet"]
EXAMPLE_LATENT = 32  # the traced example's latent side (256 pixels)
log = logging.getLogger(__name__)


def converted(dest: Path, part: str = "unet") -> bool:
    return (dest / MARKER).exists() and (dest / IR_NAMES[part]).exists()


def _unet(source: str, lora: str | None = None):
    """The UNet with float32 inputs and output, and the timestep a float32 scalar (schedulers such as
    Euler use fractional timesteps): (module, example inputs, input names, weights' dtype). With
    ``lora`` (a LoRA's .safetensors file, as the fast preset's LCM-LoRA), that LoRA fused in at weight 1."""
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    # (The LoRA helpers are the same for every family's UNet: the keys are the UNet's own.)
    unet = UNet2DConditionModel.from_pretrained(source, subfolder="unet", low_cpu_mem_usage=True).eval()
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
            # SDXL's added conditioning: the pooled text embedding and the size/crop ids, two more inputs.
            extra = {"added_cond_kwargs": {"text_embeds": added[0].to(dtype), "time_ids": added[1].to(dtype)}} \
                if added else {}
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
    if cfg.addition_embed_type == "text_time":
        pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
        example += (torch.randn(2, pooled), torch.tensor([[1024.0, 1024, 0, 0, 1024, 1024]] * 2))
        names += ("text_embeds", "time_ids")
    return Traced(), example, names, dtype


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


def convert(source: str, dest: Path, part: str = "unet", lora: str | None = None, precision: str = "bf16") -> float:
    import openvino as ov
    import torch

    started = time.monotonic()
    module, example, names, dtype = _unet(source, lora) if part == "unet" else _vae_decoder(source)
    with torch.no_grad():
        model = ov.convert_model(module, example_input=example)
    for i, name in enumerate(names):
        model.inputs[i].get_tensor().set_names({name})
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    ov.save_model(model, tmp / IR_NAMES[part], compress_to_fp16=dtype == torch.float32 and precision == "bf16")
    seconds = round(time.monotonic() - started, 1)
    made = {"source": source, "part": part, "lora": lora, "precision": precision,
            "weights": str(dtype).removeprefix("torch."),
            "openvino": ov.__version__, "seconds": seconds}
    (tmp / MARKER).write_text(json.dumps(made), encoding="utf-8")
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)  # a crash mid-way leaves no half-written IR behind
    return seconds


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", help="a local diffusers directory (the bf16 copy, or the model itself)")
    ap.add_argument("dest", type=Path)
    ap.add_argument("--part", choices=sorted(IR_NAMES), default="unet")
    ap.add_argument("--lora", help="a LoRA's .safetensors file, fused into the UNet at weight 1")
    ap.add_argument("--precision", choices=("bf16", "f32"), default="bf16", help="the inference precision it is for")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s [openvino-convert] %(message)s")
    seconds = convert(args.source, args.dest, args.part, args.lora, args.precision)
    log.info("converted the %s of %s to OpenVINO IR in %.1f s: %s", args.part, args.source, seconds, args.dest)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
