"""Writes random-weight annotator models in the layout ANNOTATOR_DIR takes, so every preprocessor that needs
one is tested offline and benchmarked without a download: the ``.pth`` files under lllyasviel/Annotators'
names (the real networks at their real size, a few to 56 MB each: their shape is the file format) and a
tiny Depth Anything folder (a transformers config with small widths; the loader reads any size).

A random network's map is noise, not edges or depth: the tests check what runs, its size and that it is
deterministic, and image quality is out of reach here as for every model.

Usage: ``python -m model_server.engine.stand_in_annotators DIR [ANNOTATOR ...]``
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path

from model_server.control.annotator_files import ANNOTATORS

DEPTH_FOLDER = "tiny-depth-anything"


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
    raise ValueError(annotator)


def _depth_anything(folder: Path, seed: int) -> None:
    import torch
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config, DPTImageProcessor

    torch.manual_seed(seed)
    backbone = Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                            image_size=56, patch_size=14, out_indices=[1, 2, 3, 4], reshape_hidden_states=False,
                            apply_layernorm=True)
    config = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=32, neck_hidden_sizes=[8, 16, 32, 32],
                                 fusion_hidden_size=16, head_hidden_size=8)
    DepthAnythingForDepthEstimation(config).save_pretrained(folder)
    # As the published one's processor, at a small side (a multiple of the patch, aspect kept)
    DPTImageProcessor(size={"height": 56, "width": 56}, keep_aspect_ratio=True, ensure_multiple_of=14,
                      do_pad=False, resample=3, image_mean=[0.485, 0.456, 0.406],
                      image_std=[0.229, 0.224, 0.225]).save_pretrained(folder)
    json.loads((folder / "config.json").read_text())  # written whole


def write_stand_in_annotators(folder: Path, names: tuple[str, ...] = ("lineart", "hed", "pidinet", "mlsd",
                                                                        "depth_anything"), seed: int = 0) -> list[Path]:
    """Write the annotators ``names`` into ``folder``, each once; their files and folders."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name in names:
        target = folder / (ANNOTATORS[name].file or DEPTH_FOLDER)
        written.append(target)
        if target.exists():
            continue
        if name == "depth_anything":
            _depth_anything(target, seed)
            continue
        torch.manual_seed(seed)
        state = _network(name).state_dict()
        # PiDiNet's published file wraps its tensors as it was trained (DataParallel, in a "state_dict")
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}} if name == "pidinet" else state,
                   target)
    return written


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("names", nargs="*", choices=[*ANNOTATORS.keys() - {"midas"}, []], metavar="ANNOTATOR")
    args = ap.parse_args()
    for path in write_stand_in_annotators(args.folder, *([tuple(args.names)] if args.names else [])):
        print(path)


if __name__ == "__main__":
    main()
