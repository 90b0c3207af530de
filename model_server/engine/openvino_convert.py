"""One-time conversion of a model's UNet to OpenVINO IR, run in its own process.

``openvino.convert_model`` traces the diffusers UNet under our pinned torch (no optimum-intel at
run time) and ``save_model`` writes the IR. Tracing holds the torch model and the graph at once
(about 3.5 GB from the bf16 copy, 6 GB from float32 weights for SD v1), so it runs once, in a
short-lived child, and the server only ever maps the result; later starts reuse it.

The IR's inputs are float32 whatever the weights are (the wrapper casts inside the graph): the
denoising loop hands float32 or bf16 tensors and numpy has no bf16. Weights keep the source's
precision: bf16 from the bf16 copy, float16 from float32 (``compress_to_fp16``: half the file,
and the CPU plugin computes in its inference precision either way).

    python -m model_server.engine.openvino_convert SOURCE DEST [--subfolder unet]
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
IR_NAME = "unet.xml"
log = logging.getLogger(__name__)


def converted(dest: Path) -> bool:
    return (dest / MARKER).exists() and (dest / IR_NAME).exists()


def convert(source: str, dest: Path, subfolder: str = "unet") -> float:
    import openvino as ov
    import torch
    from diffusers import UNet2DConditionModel

    started = time.monotonic()
    unet = UNet2DConditionModel.from_pretrained(source, subfolder=subfolder, low_cpu_mem_usage=True).eval()
    dtype = unet.dtype

    class Traced(torch.nn.Module):
        """The UNet with float32 inputs and output, and the timestep a float32 scalar (schedulers
        such as Euler use fractional timesteps)."""

        def __init__(self):
            super().__init__()
            self.unet = unet

        def forward(self, sample, timestep, encoder_hidden_states):
            out = self.unet(sample.to(dtype), timestep, encoder_hidden_states.to(dtype), return_dict=False)[0]
            return out.float()

    cfg = unet.config
    size = cfg.sample_size if isinstance(cfg.sample_size, int) else cfg.sample_size[0]
    example = (torch.randn(2, cfg.in_channels, size, size), torch.tensor(999.0),
               torch.randn(2, 77, cfg.cross_attention_dim))
    with torch.no_grad():
        model = ov.convert_model(Traced(), example_input=example)
    for i, name in enumerate(("sample", "timestep", "encoder_hidden_states")):
        model.inputs[i].get_tensor().set_names({name})
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    ov.save_model(model, tmp / IR_NAME, compress_to_fp16=dtype == torch.float32)
    seconds = round(time.monotonic() - started, 1)
    (tmp / MARKER).write_text(json.dumps({"source": source, "weights": str(dtype).removeprefix("torch."),
                                          "openvino": ov.__version__, "seconds": seconds}), encoding="utf-8")
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)  # a crash mid-way leaves no half-written IR behind
    return seconds


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", help="a local diffusers directory (the bf16 copy, or the model itself)")
    ap.add_argument("dest", type=Path)
    ap.add_argument("--subfolder", default="unet")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s [openvino-convert] %(message)s")
    seconds = convert(args.source, args.dest, args.subfolder)
    log.info("converted the UNet of %s to OpenVINO IR in %.1f s: %s", args.source, seconds, args.dest)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
