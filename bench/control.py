"""ControlNet and IP-Adapter against the plain job, measured in one run on the full-size SD v1.4 stand-in
(bench/sd14_model.py), a full-size random-weight SD 1.5 ControlNet made from its UNet as ControlNets are (361 M
parameters, fp32 safetensors like a published one) and an IP-Adapter of ip-adapter_sd15's shape with a ViT-H/14
image encoder (h94/IP-Adapter's layout): 512x512, guided, one unit, each configuration in a fresh process
through the server's own pipeline, after a warm-up image; the peak includes the load (the one-time
conversions to OpenVINO run in child processes on the warm-up image: in neither the time nor the peak).

    python -m bench.control                  # bench/results/control.{json,md}
    python -m bench.control --steps 4 --configs "plain torch,controlnet torch"
    python -m bench.control --configs "plain openvino int8,controlnet openvino int8" --name control-int8

Time and memory do not depend on weight values; image quality is not judged here.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

from bench.models import _gib, fresh_row, markdown_table, write_results
from bench.sd14_model import DEFAULT_DIR

CONTROLNET_DIR = DEFAULT_DIR.parent / "controlnets"
CONTROLNET = "controlnet-sd15-random"
CONFIGS = {  # name -> (SD_BACKEND, with the unit, SD_INT8)
    "plain torch": ("torch", False, "none"), "controlnet torch": ("torch", True, "none"),
    "plain openvino": ("openvino", False, "none"), "controlnet openvino": ("openvino", True, "none"),
    "ip-adapter torch": ("torch", "ip-adapter", "none"),
    # SD_INT8=weights: the UNet's int8 weights, and the control UNet's and the ControlNet's (--configs names them)
    "plain openvino int8": ("openvino", False, "weights"), "controlnet openvino int8": ("openvino", True, "weights"),
}
DEFAULT_CONFIGS = "plain torch,controlnet torch,plain openvino,controlnet openvino,ip-adapter torch"
IP_ADAPTER = "ip-adapter_sd15-random"
COLUMNS = [("config", "config"), ("runs on", "engine"), ("s/step", "s_per_step"), ("vs plain, same engine", "vs_plain"),
           ("s/image", "s_per_image"), ("peak GiB (load included)", "peak_rss_gib"), ("vs plain, GiB", "delta_gib")]


def build(folder: Path = CONTROLNET_DIR) -> Path:
    """The SD 1.5 ControlNet stand-in, made once from the stand-in's UNet (output convolutions filled: a fresh one's
    are zero, and zero weights could let a kernel take a shortcut)."""
    path = folder / CONTROLNET
    if (path / "config.json").exists():
        return path
    import torch
    from diffusers import ControlNetModel, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(str(DEFAULT_DIR), subfolder="unet")
    net = ControlNetModel.from_unet(unet)
    torch.manual_seed(0)
    with torch.no_grad():
        for conv in [*net.controlnet_down_blocks, net.controlnet_mid_block]:
            conv.weight.normal_(0.0, 0.01)
    net.save_pretrained(path, safe_serialization=True)
    return path


def build_ip_adapter(folder: Path = CONTROLNET_DIR) -> Path:
    """The IP-Adapter stand-in: ip-adapter_sd15's tensors (4 image tokens, to_k_ip/to_v_ip on every cross-attention)
    for the stand-in's UNet, beside a ViT-H/14 image encoder (632 M parameters), made once."""
    path = folder / "ip-adapter" / f"{IP_ADAPTER}.safetensors"
    if path.exists():
        return path
    import torch
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=1280, intermediate_size=5120, num_attention_heads=16, num_hidden_layers=32, image_size=224,
        patch_size=14, projection_dim=1024, hidden_act="gelu")).save_pretrained(path.parent / "image_encoder")
    unet = UNet2DConditionModel.from_pretrained(str(DEFAULT_DIR), subfolder="unet")
    cross, embed, tokens = unet.config.cross_attention_dim, 1024, 4
    state = {"image_proj.proj.weight": torch.randn(cross * tokens, embed) * 0.02,
             "image_proj.proj.bias": torch.zeros(cross * tokens),
             "image_proj.norm.weight": torch.ones(cross), "image_proj.norm.bias": torch.zeros(cross)}
    key = 1
    for name in unet.attn_processors:
        if not name.endswith("attn1.processor"):
            width = unet.get_submodule(name.removesuffix(".processor")).to_k.out_features
            state[f"ip_adapter.{key}.to_k_ip.weight"] = torch.randn(width, cross) * 0.02
            state[f"ip_adapter.{key}.to_v_ip.weight"] = torch.randn(width, cross) * 0.02
            key += 2
    save_file(state, str(path))
    return path


def worker(name: str, steps: int) -> dict:
    from PIL import Image, ImageDraw

    from bench.measure import PeakRss
    from model_server.control.catalog import ControlNets
    from model_server.control.preprocessors import control_maps
    from model_server.engine.diffusers_pipeline import DiffusersPipeline
    from model_server.settings import ModelServerSettings
    from protocol.messages import ControlUnit, GenerationParams

    backend, controlled, int8 = CONFIGS[name]
    drawing = Image.new("RGB", (512, 512), "white")
    ImageDraw.Draw(drawing).ellipse((64, 64, 448, 448), outline="black", width=8)
    unit = (ControlUnit(module="ip-adapter", model=IP_ADAPTER) if controlled == "ip-adapter"
            else ControlUnit(module="canny", model=CONTROLNET))
    units = [unit] if controlled else []
    with PeakRss() as rss:
        settings = dataclasses.replace(ModelServerSettings.from_env(), model=str(DEFAULT_DIR), lcm_lora="none",
                                       tiny_vae="none", backend=backend, int8=int8)
        pipe = DiffusersPipeline.load(settings)
        if controlled:
            pipe.apply_controlnets([(unit.model, ControlNets(str(CONTROLNET_DIR)).find(unit.model))])

        def run(n: int):
            params = GenerationParams(prompt="a lighthouse on a cliff at dusk", seed=1234, steps=n, width=512,
                                      height=512, controls=units)
            pipe.prepare_parts(params, lambda text: None, lambda: None)  # loads (on OpenVINO: converts, once)
            maps = control_maps(params, [drawing] * len(units), None, None, params.seed) if units else None
            times: list[float] = []
            started = time.perf_counter()
            pipe.generate(params, params.seed, lambda step, seconds, preview=None: times.append(seconds),
                          lambda: None, control=maps)
            return time.perf_counter() - started, times, params

        run(2)  # warm-up
        seconds, times, params = run(steps)
        return {"config": name, "engine": pipe.engine(params), "s_per_step": round(statistics.median(times[1:]), 2),
                "s_per_image": round(seconds, 1), "peak_rss_gib": _gib(rss.mark())}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default=DEFAULT_CONFIGS, help=f"some of: {', '.join(CONFIGS)}")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--name", default="control")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.steps)))
        return 0
    from bench.sd14_model import build as build_sd14

    build_sd14(DEFAULT_DIR)
    build()
    build_ip_adapter()
    rows = [fresh_row("bench.control", "--worker", name, "--steps", str(args.steps))
            for name in args.configs.split(",")]
    engine = {name: (backend, int8) for name, (backend, _, int8) in CONFIGS.items()}
    plain = {engine[r["config"]]: r for r in rows if not CONFIGS[r["config"]][1]}
    for r in rows:
        base = plain.get(engine[r["config"]])
        if base is not None and r is not base:
            r["vs_plain"] = round(r["s_per_step"] / base["s_per_step"], 2)
            r["delta_gib"] = round(r["peak_rss_gib"] - base["peak_rss_gib"], 2)
    markdown = markdown_table(rows, COLUMNS)
    write_results(args.name, "python -m bench.control " + " ".join(sys.argv[1:]), rows, markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
