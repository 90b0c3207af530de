"""The control preprocessors that run an annotator model, against the built-in canny, measured in one run:
random-weight stand-ins at the published networks' size (model_server/engine/stand_in_annotators.py: line art,
HED, PiDiNet, M-LSD, OpenPose's body and NormalBAE as lllyasviel/Annotators ships them, Depth Anything V2
Small's shape), each in a fresh process through the server's own preprocessors: a 768x512 photo-like image at
processor_res 512, the first map (which loads the annotator) timed apart from the median of three more; the
peak is the largest resident memory sampled while the maps are made (every 10 ms), over the process's
before the load.

    python -m bench.annotators               # bench/results/annotators.{json,md}

Time and memory do not depend on weight values; what a random network draws is not judged.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

from bench.models import fresh_row, markdown_table, write_results
from bench.sd14_model import DEFAULT_DIR

FOLDER = DEFAULT_DIR.parent / "annotators"
MODULES = ["canny", "lineart_realistic", "softedge_hed", "softedge_pidinet", "mlsd", "openpose", "normal_bae",
           "depth_anything_v2"]
COLUMNS = [("module", "module"), ("annotator file", "file"), ("first map s (load included)", "first_s"),
           ("s/map", "s_per_map"), ("vs canny", "vs_canny"), ("peak over the process, GiB", "delta_gib")]


def _image():
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    image = Image.fromarray((rng.random((512, 768, 3)) * 60 + 100).astype("uint8"))
    draw = ImageDraw.Draw(image)
    for i in range(12):  # shapes and lines: something for edges and lines to find
        x, y = int(rng.integers(0, 700)), int(rng.integers(0, 450))
        draw.rectangle((x, y, x + 60, y + 40), outline=(20, 20, 20), width=3)
        draw.line((0, 40 * i, 768, 512 - 40 * i), fill=(240, 240, 240), width=2)
    return image


def one(module: str) -> dict:
    """One module in this process (run by ``main`` in a fresh one)."""
    import torch  # noqa: F401  (in the baseline: the server has it loaded before any map)

    from model_server.control.annotator_files import AnnotatorFiles
    from model_server.control.preprocessors import detect
    from model_server.engine.annotators import Annotators
    from model_server.memory import PeakSampler, rss_bytes

    files = AnnotatorFiles(str(FOLDER))
    annotators = Annotators(files)
    image = _image()
    import cv2  # noqa: F401  (canny's library: in the baseline too)

    before = rss_bytes()
    sampler = PeakSampler(0.01).start()
    started = time.perf_counter()
    detect(module, image, 512, annotators=annotators)
    first = time.perf_counter() - started
    times = []
    for _ in range(3):
        started = time.perf_counter()
        detect(module, image, 512, annotators=annotators)
        times.append(time.perf_counter() - started)
    peak = sampler.stop()
    path = files.path(module) if module in files.modules() else None
    return {"module": module, "file": path.name if path else "", "first_s": round(first, 3),
            "s_per_map": round(statistics.median(times), 3), "delta_gib": round((peak - before) / 2**30, 3)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--modules", default=",".join(MODULES))
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(one(args.one)))
        return 0
    from model_server.engine.stand_in_annotators import write_stand_in_annotators

    write_stand_in_annotators(FOLDER, ("lineart", "hed", "pidinet", "mlsd", "openpose", "normal_bae", "depth_anything"),
                              full=True)
    rows = [fresh_row("bench.annotators", "--one", module) for module in args.modules.split(",")]
    canny = next((r["s_per_map"] for r in rows if r["module"] == "canny"), None)
    for row in rows:
        if canny:
            row["vs_canny"] = round(row["s_per_map"] / canny, 1)
    table = markdown_table(rows, COLUMNS)
    write_results("annotators", "python -m bench.annotators " + " ".join(argv or sys.argv[1:]), rows, table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
