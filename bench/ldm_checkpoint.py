"""Writes a diffusers Stable Diffusion v1 or SDXL pipeline as one original-layout (LDM/SGM) ``.safetensors``
file, the single-file checkpoint people download, so single-file loading is tested on a file the
code made (no weights can be downloaded here). Checked by loading it back through diffusers'
own conversion and comparing every tensor (tests/model_server/test_single_file.py); the benchmark
writes the full-size stand-in with it (bench/models.py)."""

from __future__ import annotations

from pathlib import Path

_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
           "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _unet_name(key: str, config: dict) -> str:
    per = config["layers_per_block"] + 1  # LDM counts a block's resnets and its down/upsampler together
    parts = key.split(".")
    simple = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
              "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",  # SDXL's
              "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
    head = ".".join(parts[:2]) if parts[0] in ("time_embedding", "add_embedding") else parts[0]
    if head in simple:
        return f"{simple[head]}.{parts[-1]}"
    block, rest = parts[0], parts[1:]
    if block == "mid_block":
        kind, index, inner = rest[0], int(rest[1]), rest[2:]
        target = f"middle_block.{1 if kind == 'attentions' else 2 * index}"
    else:
        i, kind, index, inner = int(rest[0]), rest[1], int(rest[2]), rest[3:]
        if block == "down_blocks":
            target = (f"input_blocks.{per * (i + 1)}.0" if kind == "downsamplers"
                      else f"input_blocks.{per * i + index + 1}.{1 if kind == 'attentions' else 0}")
            if kind == "downsamplers":
                inner = ["op", *inner[1:]]
        else:
            has_attention = "CrossAttn" in config["up_block_types"][i]
            target = (f"output_blocks.{per * i + per - 1}.{2 if has_attention else 1}" if kind == "upsamplers"
                      else f"output_blocks.{per * i + index}.{1 if kind == 'attentions' else 0}")
    if kind == "resnets":
        name = ".".join(inner[:-1])
        inner = [_RESNET.get(name, name), inner[-1]]
    return f"{target}.{'.'.join(inner)}"


def _vae_name(key: str, blocks: int) -> str:
    key = key.replace("mid_block.resnets.0", "mid.block_1").replace("mid_block.resnets.1", "mid.block_2")
    key = key.replace("mid_block.attentions.0", "mid.attn_1").replace("conv_norm_out", "norm_out")
    parts = key.split(".")
    if parts[1] in ("down_blocks", "up_blocks"):
        i = int(parts[2]) if parts[1] == "down_blocks" else blocks - 1 - int(parts[2])
        side = "down" if parts[1] == "down_blocks" else "up"
        rest = parts[3:]
        if rest[0] in ("downsamplers", "upsamplers"):
            rest = ["downsample" if side == "down" else "upsample", *rest[2:]]
        else:
            rest = ["block", *rest[1:]]
        parts = [parts[0], side, str(i), *rest]
    key = ".".join(parts).replace("conv_shortcut", "nin_shortcut")
    for new, old in _VAE_ATTENTION.items():
        key = key.replace(f"attn_1.{new}.", f"attn_1.{old}.")
    return key


def _open_clip(state: dict, prefix: str) -> dict:
    """SDXL's second text encoder (transformers' CLIPTextModelWithProjection) in OpenCLIP's names, as SDXL
    single files hold it: q/k/v in one ``in_proj``, the projection as a matrix to multiply by."""
    import torch

    state = {(k if k.startswith(("text_model.", "text_projection")) else f"text_model.{k}"): v
             for k, v in state.items()}
    out = {prefix + "token_embedding.weight": state["text_model.embeddings.token_embedding.weight"],
           prefix + "positional_embedding": state["text_model.embeddings.position_embedding.weight"],
           prefix + "ln_final.weight": state["text_model.final_layer_norm.weight"],
           prefix + "ln_final.bias": state["text_model.final_layer_norm.bias"],
           prefix + "text_projection": state["text_projection.weight"].T}
    layers = {int(k.split(".")[3]) for k in state if k.startswith("text_model.encoder.layers.")}
    names = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "self_attn.out_proj": "attn.out_proj",
             "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}
    for i in layers:
        src, dst = f"text_model.encoder.layers.{i}.", f"{prefix}transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[f"{dst}attn.in_proj_{kind}"] = torch.cat([state[f"{src}self_attn.{p}_proj.{kind}"] for p in "qkv"])
            for ours, theirs in names.items():
                out[f"{dst}{theirs}.{kind}"] = state[f"{src}{ours}.{kind}"]
    return out


def write_ldm_checkpoint(pipe, path: str | Path) -> Path:
    """``pipe`` (an SD v1 or SDXL diffusers pipeline) as one LDM-layout safetensors file at ``path``."""
    from safetensors.torch import save_file

    tensors = {}
    for key, value in pipe.unet.state_dict().items():
        tensors[f"model.diffusion_model.{_unet_name(key, pipe.unet.config)}"] = value
    blocks = len(pipe.vae.config.block_out_channels)
    for key, value in pipe.vae.state_dict().items():
        name = _vae_name(key, blocks)
        if ".attn_1." in name and name.endswith(".weight") and value.ndim == 2:
            value = value[:, :, None, None]  # LDM's VAE attention projections are 1x1 convolutions
        tensors[f"first_stage_model.{name}"] = value
    sdxl = getattr(pipe, "text_encoder_2", None) is not None
    for key, value in pipe.text_encoder.state_dict().items():
        key = key if key.startswith("text_model.") else f"text_model.{key}"
        tensors[f"{'conditioner.embedders.0' if sdxl else 'cond_stage_model'}.transformer.{key}"] = value
    if sdxl:
        tensors.update(_open_clip(pipe.text_encoder_2.state_dict(), "conditioner.embedders.1.model."))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path
