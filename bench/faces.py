"""Face restoration, measured in one run: a GFPGAN v1.4-shaped restorer (spandrel's GFPGANv1Clean at the size of
GFPGANv1.4.pth) and a RetinaFace-ResNet50 detector (detection_Resnet50_Final.pth's shape) with random weights,
their heads set so it finds exactly one face (model_server/engine/tiny_faces.py's way), restoring that face in a
512x512 image and in the 2048x2048 image a 4x upscale makes. Run as the model server runs it
(model_server/engine/face_restore.py: the restorer in bf16 where the CPU has it natively, only the face's region
converted) and as A1111's path does (float32 restorer; the whole image converted to float for the paste, as
facexlib's helper does). Each in a fresh process; the peak is that process's RSS, "above idle" subtracts its
RSS once torch and both models are loaded.

    python -m bench.faces                         # bench/results/faces.{json,md}
    python -m bench.faces --sides 512 --name faces-512

Time and memory do not depend on weight values; image quality is not judged here.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from bench.models import _gib, markdown_table, write_results
from bench.run import ROOT

FOLDER = Path(os.environ.get("SD_CACHE_DIR", Path.home() / ".cache" / "sd-cpu")) / "bench" / "faces"
RESTORER = FOLDER / "GFPGANv1.4-random.pth"
DETECTOR = FOLDER / "detection_Resnet50_Final.pth"
COLUMNS = [("config", "config"), ("dtype", "dtype"), ("image", "image"), ("faces", "faces"),
           ("detect s", "detect_seconds"), ("s", "seconds"), ("peak GiB", "peak_rss_gib"),
           ("above idle GiB", "above_idle_gib")]


def build() -> None:
    """The stand-ins' files, written once."""
    if RESTORER.exists() and DETECTOR.exists():
        return
    import torch

    from model_server.engine.tiny_faces import detector_state
    from model_server.engine.upscale_models import import_spandrel

    import_spandrel()
    from spandrel.architectures.GFPGAN import GFPGAN

    FOLDER.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    # spandrel's GFPGAN loader's fixed shape: GFPGANv1.3/1.4's
    model = GFPGAN(out_size=512, num_style_feat=512, channel_multiplier=2, decoder_load_path=None, fix_decoder=False,
                   num_mlp=8, input_is_latent=True, different_w=True, narrow=1, sft_half=True)
    torch.save(model.state_dict(), RESTORER)
    torch.save(detector_state(True, 0, backbone="resnet50"), DETECTOR)


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def paste_whole(pixels, face, restore):
    """One face restored and pasted as facexlib's helper does it: the restored face, its mask and the blend
    at the whole image's size in float (the same maths as face_restore.restore_face_in, over every pixel)."""
    import numpy as np
    import torch
    from torch.nn import functional as F

    from model_server.engine import face_restore as fr

    height, width = pixels.shape[:2]
    image = torch.from_numpy(pixels).permute(2, 0, 1).float() / 255
    to_crop = fr.similarity(torch.tensor(face.landmarks), fr.TEMPLATE)
    restored = restore(fr.warp(image, fr._invert(to_crop), fr.CROP, fr.CROP).clamp(0, 1)).float()
    back = fr.warp(restored, to_crop, width, height)
    inside = (fr.warp(torch.ones(1, fr.CROP, fr.CROP), to_crop, width, height, padding="zeros") > 0.999).float()
    mask = fr._soft(-F.max_pool2d(-inside[None], 3, 1, 1)[0], int(float(inside.sum()) ** 0.5) // 20)
    out = image + (back - image) * mask
    return out.mul(255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy().astype(np.uint8)


def child(config: str, side: int) -> dict:
    """One configuration in this (fresh) process."""
    import numpy as np
    import torch
    from PIL import Image

    from model_server.engine import face_restore
    from model_server.engine.face_detector import detect

    image = Image.effect_noise((side, side), 40).convert("RGB")
    models = face_restore.FaceModels()
    net = models._load_detector(DETECTOR)
    restorer = face_restore.load_restorer(RESTORER)
    if config == "a1111":
        restorer.descriptor.to(torch.float32)
        restorer.dtype = torch.float32
    models._restorer = restorer
    idle = _rss()
    started = time.perf_counter()
    rgb = torch.from_numpy(np.array(image)).permute(2, 0, 1)
    found = face_restore.faces_to_restore(detect(net, rgb))
    detected = time.perf_counter() - started
    pixels = np.array(image)
    if config == "ours":
        for face in found:
            face_restore.restore_face_in(pixels, face, restorer, 1.0)
    else:
        for face in found:
            pixels = paste_whole(pixels, face, restorer)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"config": config, "dtype": str(restorer.dtype).replace("torch.", ""), "image": f"{side}x{side}",
            "faces": len(found), "detect_seconds": round(detected, 2), "seconds": round(seconds, 2),
            "peak_rss_gib": _gib(peak), "above_idle_gib": _gib(peak - idle)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sides", default="512,2048")
    ap.add_argument("--configs", default="ours,a1111")
    ap.add_argument("--name", default="faces")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--side", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.side)))
        return 0
    build()
    rows = []
    for side in args.sides.split(","):
        for config in args.configs.split(","):
            cmd = [sys.executable, "-m", "bench.faces", "--child", config, "--side", side]
            out = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True, check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    for row in rows:
        plain = next((r for r in rows if r["config"] == "a1111" and r["image"] == row["image"]), None)
        if plain and row["config"] == "ours":
            row["speedup"] = round(plain["seconds"] / row["seconds"], 2)
    markdown = markdown_table(rows, COLUMNS + [("speed-up", "speedup")])
    command = "python -m bench.faces " + " ".join(sys.argv[1:])
    write_results(args.name, command.strip(), rows, markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
