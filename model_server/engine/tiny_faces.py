"""Writes a tiny face-restoration folder, so every face-restoration flow is tested offline: a RestoreFormer
with random weights (spandrel detects it as a face restorer, as it does GFPGAN) and RetinaFace
detectors in the layout of facexlib's ``detection_mobilenet0.25_Final.pth``.

A random detector finds random faces, or none; these have random backbones but set heads, so they
are predictable: ``one-face`` finds exactly one face, centred, in any image (every anchor of the
coarsest level says "face" with boxes so large that they all overlap and one is kept; the landmarks
put a frontal face of a third of the detector's view in the middle), ``no-face`` finds none.

Usage: ``python -m model_server.engine.tiny_faces DIR [--no-face]``
"""

from __future__ import annotations

import argparse
from pathlib import Path

RESTORER = "tiny-restoreformer.safetensors"
DETECTOR = "detection_mobilenet0.25_Final.pth"  # the name A1111 users have it under


def detector_state(face: bool, seed: int, backbone: str = "mobilenet0.25") -> dict:
    """A RetinaFace's weights (random backbone, set heads) finding one face, or none (``face``)."""
    import torch

    from model_server.engine.face_detector import DETECT_SHORT_SIDE, MIN_SIZES, STRIDES, VARIANCES, RetinaFace
    from model_server.engine.face_restore import CROP, TEMPLATE

    torch.manual_seed(seed)
    net = RetinaFace(backbone)
    with torch.no_grad():
        for heads in (net.ClassHead, net.BboxHead, net.LandmarkHead):
            for head in heads:
                head.conv1x1.weight.zero_()
                head.conv1x1.bias.zero_()
        for level, head in enumerate(net.ClassHead):
            # (background, face) per anchor: only the coarsest level's largest anchor may be a face.
            face_here = face and level == len(STRIDES) - 1
            head.conv1x1.bias.copy_(torch.tensor([10.0, -10.0, *((-10.0, 10.0) if face_here else (10.0, -10.0))]))
        for head in net.BboxHead:  # boxes e^2 times their anchors: all overlap, so one survives
            head.conv1x1.bias.copy_(torch.tensor([0.0, 0.0, 10.0, 10.0] * 2))
        # The survivor is the first anchor (top left); its landmarks are placed from its centre in units
        # of VARIANCES[0] x its size: a face a third of the view wide, in the view's middle, for a square
        # image seen at DETECT_SHORT_SIDE.
        side, anchor = DETECT_SHORT_SIDE, MIN_SIZES[-1][1]
        first = STRIDES[-1] / 2
        points = (TEMPLATE - CROP / 2) / CROP * (side / 3) + side / 2 - first
        head = net.LandmarkHead[-1]
        head.conv1x1.bias.copy_((points / (VARIANCES[0] * anchor)).flatten().repeat(2))
    return {key: value.contiguous() for key, value in net.state_dict().items()}


def write_tiny_faces(folder: Path, face: bool = True, seed: int = 0) -> list[Path]:
    """Write the tiny restorer and a detector (finding one face, or none) into ``folder``; their paths."""
    import torch
    from safetensors.torch import save_file

    from model_server.engine.upscale_models import import_spandrel

    import_spandrel()  # the architectures' modules import through it
    from spandrel.architectures.RestoreFormer import RestoreFormer

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    # GroupNorm's 32 groups set the width; six levels (512 -> 16) keep its attention at 16 x 16.
    restorer = RestoreFormer(n_embed=32, embed_dim=16, ch=32, out_ch=3, ch_mult=(1, 1, 1, 1, 1, 1),
                             num_res_blocks=1, attn_resolutions=(16,), dropout=0.0, in_channels=3, resolution=512,
                             z_channels=32, double_z=False, enable_mid=True, head_size=8)
    save_file({k: v.contiguous() for k, v in restorer.state_dict().items()}, str(folder / RESTORER))
    torch.save(detector_state(face, seed), folder / DETECTOR)
    return [folder / RESTORER, folder / DETECTOR]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--no-face", action="store_true", help="a detector that finds no face")
    args = ap.parse_args()
    for path in write_tiny_faces(args.folder, face=not args.no_face):
        print(path)


if __name__ == "__main__":
    main()
