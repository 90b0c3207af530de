"""One-time conversion of a model to bfloat16 safetensors, run in its own process.

Loading fp32 files as bf16 briefly holds both copies: about 5.3 GB for SD v1.4, twice what the
server then keeps. Doing that once, in a short-lived child process, and saving the result means
the long-lived model server only ever maps bf16 files: its peak stays near its steady state, and
later starts skip the conversion.

    python -m model_server.engine.convert SOURCE DEST [--revision REV] [--safety-checker] [--unet-only]

``--unet-only`` converts just the UNet (an inpainting checkpoint's, used beside the model's own
text encoder and VAE).
The token, if any, comes from HF_TOKEN in the environment (never the command line).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

MARKER = "sd_cpu_converted.json"
log = logging.getLogger(__name__)


def converted(dest: Path) -> bool:
    return (dest / MARKER).exists()


class ConversionStopped(Exception):
    """A conversion's ``stop`` turned true: its child was ended, nothing was written; it runs again
    when next wanted."""


def run_once(what: str, args: list[str], dest: Path, done=converted, env: dict | None = None,
             clean=lambda text: text, stop: Callable[[], bool] | None = None) -> tuple[float | None, str]:
    """Run a one-time conversion (``python -m ARGS``, writing ``dest``) in a child process, as the bf16
    copy, the OpenVINO IR and its int8 form are made: (seconds, "") or (None, why it failed). ``clean``
    scrubs the child's output (a token, paths) before it is logged. ``stop`` is asked four times a
    second: when it says so the child is ended and ConversionStopped raised (a job cancelled while it
    waits, a job arriving while the conversion runs ahead in idle time)."""
    started = time.monotonic()
    log.info("%s once (a child process; later starts reuse %s)", what, dest)
    with tempfile.TemporaryFile(mode="w+") as output:  # a file, not a pipe: a chatty child never blocks
        child = subprocess.Popen([sys.executable, "-m", *args], env=env, stdout=output, stderr=subprocess.STDOUT,
                                 text=True)
        try:
            while child.poll() is None:
                if stop is not None and stop():
                    log.info("%s: stopped after %.0f s; it runs again when next wanted", what,
                             time.monotonic() - started)
                    raise ConversionStopped(what)
                try:
                    child.wait(0.25)
                except subprocess.TimeoutExpired:
                    pass
        finally:
            if child.poll() is None:
                child.kill()  # its output is written to a temporary name: nothing half-made is kept
                child.wait()
        output.seek(0)
        text = output.read()
    if child.returncode != 0 or not done(dest):
        log.warning("%s failed (exit %s):\n%s", what, child.returncode, clean(text[-1500:]))
        return None, f"{what} failed (exit {child.returncode}; see the log)"
    seconds = round(time.monotonic() - started, 1)
    log.info("%s: done in %.1f s", what, seconds)
    return seconds, ""


def convert(source: str, dest: Path, token: str | None, revision: str | None, safety_checker: bool,
            unet_only: bool = False) -> float:
    import torch
    from diffusers import DiffusionPipeline, UNet2DConditionModel

    started = time.monotonic()
    kwargs = dict(dtype=torch.bfloat16, low_cpu_mem_usage=True, token=token, revision=revision)
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    if unet_only:
        UNet2DConditionModel.from_pretrained(source, subfolder="unet", **kwargs).save_pretrained(
            tmp / "unet", safe_serialization=True)
    else:
        if not safety_checker:
            kwargs.update(safety_checker=None, requires_safety_checker=False)
        # The class its model_index names: SD 1.x/2.x or SDXL.
        DiffusionPipeline.from_pretrained(source, **kwargs).save_pretrained(tmp, safe_serialization=True)
    seconds = round(time.monotonic() - started, 1)
    finish(tmp, dest, {"source": source, "revision": revision, "dtype": "bfloat16", "seconds": seconds})
    return seconds


def finish(tmp: Path, dest: Path, marker: dict) -> None:
    """Mark a conversion written to ``tmp`` as done and move it to ``dest`` in one step: a crash mid-way
    leaves no half-converted model behind."""
    (tmp / MARKER).write_text(json.dumps(marker), encoding="utf-8")
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source")
    ap.add_argument("dest", type=Path)
    ap.add_argument("--revision")
    ap.add_argument("--safety-checker", action="store_true")
    ap.add_argument("--unet-only", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s [convert] %(message)s")
    token = os.environ.get("HF_TOKEN") or None
    seconds = convert(args.source, args.dest, token, args.revision, args.safety_checker, args.unet_only)
    log.info("converted %s to bfloat16 in %.1f s: %s", args.source, seconds, args.dest)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
