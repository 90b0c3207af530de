"""Writes a diffusers pipeline in optimum-intel's all-OpenVINO layout (``openvino_ir_model`` loads it).

The OpenVINO organisation publishes Stable Diffusion ready to run in this layout (its ``*-int8-ov`` and
``*-fp16-ov`` repositories): every part an IR in its own folder (``unet/``, ``text_encoder/``,
``text_encoder_2/``, ``vae_decoder/``, ``vae_encoder/``, each ``openvino_model.xml`` and ``.bin`` beside
its ``config.json``), the tokenizers, the scheduler and ``model_index.json``, and no torch weights. No such
model can be downloaded here, so this writes one from a local diffusers pipeline with the same inputs,
outputs and types optimum-intel's exporter gives (model_configs.py there): the UNet takes ``sample``, an int64
``timestep`` of rank 1 and ``encoder_hidden_states`` (SDXL's also ``text_embeds`` and ``time_ids``) and gives
``out_sample``; a text encoder takes int64 ``input_ids`` and gives ``last_hidden_state`` and ``pooler_output``
(a projection encoder ``text_embeds`` first; SDXL's every ``hidden_states.N`` too); the VAE decoder
``latent_sample`` to ``sample``, its encoder ``sample`` to ``latent_parameters``. The tests' ``tiny-int8-ov``
and the bench's full-size stand-in are made so.

``--int8 hybrid`` quantizes as the published int8 models are: the UNet's convolutions in weights and
activations, calibrated (here on random inputs: only the graph's form matters for what loads it), its
matmuls' weights and every other part's weights int8 (data-free). ``--int8 weights``: no calibration, the UNet's
matmuls' weights int8 (as ``SD_INT8=weights``) and every other part's weights.

    python -m model_server.engine.openvino_ir_export SOURCE DEST [--int8 none|hybrid|weights]
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path

log = logging.getLogger(__name__)
XML = "openvino_model.xml"
MODES = ("none", "hybrid", "weights")


def _text_encoder(encoder, hidden_states: bool):
    """(module, example, output names) for a CLIP text encoder (with or without projection)."""
    import torch

    projection = hasattr(encoder, "text_projection")
    layers = encoder.config.num_hidden_layers

    class Traced(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids):
            out = self.encoder(input_ids, output_hidden_states=hidden_states)
            first = (out.text_embeds, out.last_hidden_state) if projection else (out.last_hidden_state,
                                                                                  out.pooler_output)
            return (*(t.float() for t in first), *(h.float() for h in (out.hidden_states or ())))

    names = ["text_embeds", "last_hidden_state"] if projection else ["last_hidden_state", "pooler_output"]
    names += [f"hidden_states.{i}" for i in range(layers + 1)] if hidden_states else []
    return Traced(), {"input_ids": torch.ones(1, 77, dtype=torch.int64)}, names


def _unet(unet):
    import torch

    cfg = unet.config
    text_time = cfg.addition_embed_type == "text_time"

    class Traced(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.unet = unet

        def forward(self, sample, timestep, encoder_hidden_states, *extra):
            given = dict(zip(list(example)[3:], extra))  # traced positionally, in the example's order
            added = {"added_cond_kwargs": {"text_embeds": given["text_embeds"], "time_ids": given["time_ids"]}
                     } if text_time else {}
            if "timestep_cond" in given:
                added["timestep_cond"] = given["timestep_cond"]
            return self.unet(sample, timestep, encoder_hidden_states, return_dict=False, **added)[0].float()

    example = {"sample": torch.randn(2, cfg.in_channels, 32, 32), "timestep": torch.tensor([999, 999]),
               "encoder_hidden_states": torch.randn(2, 77, cfg.cross_attention_dim)}
    if text_time:
        pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
        example.update(text_embeds=torch.randn(2, pooled), time_ids=torch.tensor([[512.0, 512, 0, 0, 512, 512]] * 2))
    if cfg.get("time_cond_proj_dim"):  # LCM-distilled: the guidance scale's embedding, as optimum-intel exports it
        example["timestep_cond"] = torch.randn(2, cfg.time_cond_proj_dim)
    return Traced(), example, ["out_sample"]


def _vae(vae, part: str):
    import torch

    class Traced(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.vae = vae

        def forward(self, x):
            if part == "vae_decoder":
                return self.vae.decode(x, return_dict=False)[0]
            return self.vae.encode(x).latent_dist.parameters

    if part == "vae_decoder":
        return Traced(), {"latent_sample": torch.randn(1, vae.config.latent_channels, 32, 32)}, ["sample"]
    return Traced(), {"sample": torch.randn(1, vae.config.in_channels, 256, 256)}, ["latent_parameters"]


def _convert(module, example: dict, outputs: list[str]):
    import openvino as ov
    import torch

    with torch.no_grad():
        model = ov.convert_model(module, example_input=tuple(example.values()))
    for port, name in zip(model.inputs, example):
        port.get_tensor().set_names({name})
    for port, name in zip(model.outputs, outputs):
        port.get_tensor().set_names({name})
    return model


def _hybrid(model, example: dict):
    """The UNet quantized as the published int8 models are (openvino_int8.hybrid), calibrated on random inputs of
    the example's shapes: the graph's form, not its scales, is what a loader meets."""
    import numpy as np

    from model_server.engine.openvino_int8 import hybrid

    rng = np.random.default_rng(0)
    samples = [{name: (rng.standard_normal(value.shape).astype(np.float32) if value.is_floating_point()
                       else value.numpy()) for name, value in example.items()} for _ in range(4)]
    return hybrid(model, samples)


def _load(source: Path, name: str, index: dict):
    """One part of the pipeline at ``source``, by the class model_index.json names (float32, as stored)."""
    import diffusers
    import transformers

    library, class_name = index[name][:2] if name in index else ("diffusers", "AutoencoderKL")
    kind = getattr(diffusers if library == "diffusers" else transformers, class_name)
    return kind.from_pretrained(source, subfolder=name, low_cpu_mem_usage=True).eval()


def export(source: str | Path, dest: str | Path, int8: str = "none") -> Path:
    """Write the diffusers pipeline at ``source`` to ``dest`` in the all-OpenVINO layout (see the module). One part
    is in memory at a time (SDXL's float32 UNet alone is 10.3 GB)."""
    import gc

    import nncf
    import openvino as ov

    from model_server.engine.openvino_convert import compress_matmul_weights

    source, dest = Path(source), Path(dest)
    index = json.loads((source / "model_index.json").read_text(encoding="utf-8"))
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    sdxl = "text_encoder_2" in index
    parts = ["unet", "vae_decoder", "vae_encoder", "text_encoder"] + (["text_encoder_2"] if sdxl else [])
    for name in parts:
        module = _load(source, "vae" if name.startswith("vae") else name, index)
        traced, example, outputs = (_unet(module) if name == "unet" else _vae(module, name) if name.startswith("vae")
                                    else _text_encoder(module, sdxl))
        model = _convert(traced, example, outputs)
        if int8 == "hybrid" and name == "unet":
            model = _hybrid(model, example)
        elif int8 == "weights" and name == "unet":  # the convolutions' int8 weights would be decompressed at compile
            model = compress_matmul_weights(model)
        elif int8 != "none":
            model = nncf.compress_weights(model)
        (tmp / name).mkdir(parents=True)
        ov.save_model(model, tmp / name / XML, compress_to_fp16=int8 == "none")
        shutil.copyfile(source / ("vae" if name.startswith("vae") else name) / "config.json",
                        tmp / name / "config.json")
        del module, traced, model
        gc.collect()
        log.info("exported %s", name)
    for folder in ("tokenizer", "tokenizer_2", "scheduler"):
        if (source / folder).is_dir():
            shutil.copytree(source / folder, tmp / folder)
    shutil.copyfile(source / "model_index.json", tmp / "model_index.json")
    (tmp / "openvino_config.json").write_text(json.dumps({"dtype": "int8" if int8 != "none" else "fp16",
                                                          "quantization": int8}), encoding="utf-8")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", help="a local diffusers pipeline folder")
    ap.add_argument("dest", type=Path)
    ap.add_argument("--int8", choices=MODES, default="none")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s [ir-export] %(message)s")
    export(args.source, args.dest, args.int8)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
