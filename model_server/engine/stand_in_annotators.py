"""Writes random-weight annotator models in the layout ANNOTATOR_DIR takes, so every preprocessor that needs
one is tested offline and benchmarked without a download: the ``.pth`` files under lllyasviel/Annotators'
names (the real networks at their real size, 3 to 290 MB: their shape is the file format) and tiny Depth
Anything and DPT folders (transformers configs with small widths; the loader reads any size).

A random network's map is noise, not edges or depth: the tests check what runs, its size and that it is
deterministic, and image quality is out of reach here as for every model.

Usage: ``python -m model_server.engine.stand_in_annotators DIR [ANNOTATOR ...]``
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path

from model_server.control.annotator_files import ANNOTATORS

DEPTH_FOLDERS = {"depth_anything": "tiny-depth-anything", "midas": "tiny-dpt-midas"}


def _network(annotator: str):
    import torch.nn as nn

    from model_server.engine.annotators import aux

    if annotator in ("lineart", "lineart_coarse"):
        return aux("lineart").Generator(3, 1, 3)
    if annotator == "lineart_anime":
        norm = functools.partial(nn.InstanceNorm2d, affine=False, track_running_stats=False)
        return aux("lineart_anime").UnetGenerator(3, 1, 8, 64, norm_layer=norm, use_dropout=False)
    if annotator == "hed":
        return aux("hed").ControlNetHED_Apache2()
    if annotator == "pidinet":
        return aux("pidi.model").pidinet()
    if annotator == "mlsd":
        return aux("mlsd").MobileV2_MLSD_Large()
    if annotator == "normal_bae":
        from model_server.engine.annotators import normal_bae_network

        return normal_bae_network()
    if annotator == "openpose":
        aux("open_pose.util")  # first (see annotators._Pose)
        return aux("open_pose.body").bodypose_model()
    raise ValueError(annotator)


def _depth(folder: Path, seed: int, model_type: str, full: bool = False) -> None:
    """A tiny transformers depth model of ``model_type`` (Depth Anything, or DPT as MiDaS ships) with its
    processor as the published one's, at a small side (a multiple of the patch); ``full``: Depth Anything V2
    Small's own shape and processor (24.8 M parameters, 518 px), for benchmarks."""
    import torch
    from transformers import (DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config, DPTConfig,
                              DPTForDepthEstimation, DPTImageProcessor)

    torch.manual_seed(seed)
    imagenet = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    if model_type == "depth_anything":
        # (hidden, heads, layers, neck widths, fusion, head, processor side): V2 Small's, or a tiny one's
        hidden, heads, layers, neck, fusion, head, side = ((384, 6, 12, [48, 96, 192, 384], 64, 32, 518) if full
                                                           else (32, 2, 4, [8, 16, 32, 32], 16, 8, 56))
        backbone = Dinov2Config(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                                intermediate_size=4 * hidden, image_size=side, patch_size=14,
                                out_indices=[layers // 4 * i for i in range(1, 5)], reshape_hidden_states=False,
                                apply_layernorm=True)
        model = DepthAnythingForDepthEstimation(DepthAnythingConfig(
            backbone_config=backbone, reassemble_hidden_size=hidden, neck_hidden_sizes=neck,
            fusion_hidden_size=fusion, head_hidden_size=head))
        patch, (mean, std), aspect = 14, imagenet, True
    else:
        model = DPTForDepthEstimation(DPTConfig(
            hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64, image_size=64,
            patch_size=16, backbone_out_indices=[0, 1, 2, 3], neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16,
            head_in_index=-1))
        patch, mean, std, aspect, side = 32, [0.5] * 3, [0.5] * 3, False, 128  # a plain ViT DPT takes squares
    model.save_pretrained(folder)
    DPTImageProcessor(size={"height": side, "width": side}, keep_aspect_ratio=aspect, ensure_multiple_of=patch,
                      do_pad=False, resample=3, image_mean=mean, image_std=std).save_pretrained(folder)


def write_stand_in_annotators(folder: Path, names: tuple[str, ...] = ("lineart", "hed", "pidinet", "mlsd", "openpose",
                                                                        "normal_bae", "depth_anything", "midas"),
                              seed: int = 0, full: bool = False) -> list[Path]:
    """Write the annotators ``names`` into ``folder``, each once; their files and folders (``full``: Depth
    Anything at its published size)."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name in names:
        # a full-size depth model is named as its published folder, a tiny one as what it is
        target = folder / (ANNOTATORS[name].file or (ANNOTATORS[name].folder if full else DEPTH_FOLDERS[name]))
        written.append(target)
        if target.exists():
            continue
        if name in DEPTH_FOLDERS:
            _depth(target, seed, ANNOTATORS[name].model_type, full)
            continue
        torch.manual_seed(seed)
        state = _network(name).state_dict()
        if name == "pidinet":  # its published file wraps its tensors as it was trained (DataParallel)
            state = {"state_dict": {f"module.{k}": v for k, v in state.items()}}
        elif name == "openpose":  # its published file's names lack the model's first part
            state = {k.split(".", 1)[1]: v for k, v in state.items()}
        elif name == "normal_bae":  # its published file wraps its tensors under "model"
            state = {"model": state}
        torch.save(state, target)
    return written


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("names", nargs="*", choices=[*ANNOTATORS, []], metavar="ANNOTATOR")
    args = ap.parse_args()
    for path in write_stand_in_annotators(args.folder, *([tuple(args.names)] if args.names else [])):
        print(path)


if __name__ == "__main__":
    main()
