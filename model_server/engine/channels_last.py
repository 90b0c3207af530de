"""channels_last (NHWC) convolution weights without keeping the NCHW copy resident.

oneDNN runs convolutions in NHWC; with NCHW weights every conv call reorders them first. The
plain ``module.to(memory_format=torch.channels_last)`` reads each weight through the safetensors
memory map, so the file pages it touched stay in the process's resident set next to the new
copy (+1.2 GiB for SD v1.4 in bf16, docs/performance.md). Here each conv weight that is still
backed by the file is read with ``pread`` instead (the page cache, not this process, holds those
bytes) and laid out NHWC directly, so the mapped NCHW pages are never touched.
"""

from __future__ import annotations

import json
import logging
import os
import struct
from pathlib import Path

import torch

log = logging.getLogger(__name__)

_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}


def _index(folder: Path) -> dict[str, tuple[Path, torch.dtype, list[int], int, int]]:
    """name -> (file, dtype, shape, start, end) for every tensor in the folder's safetensors files."""
    found = {}
    for path in sorted(folder.glob("*.safetensors")):
        with open(path, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(size))
        for name, meta in header.items():
            if name != "__metadata__" and meta["dtype"] in _DTYPES:
                start, end = meta["data_offsets"]
                found[name] = (path, _DTYPES[meta["dtype"]], meta["shape"], 8 + size + start, 8 + size + end)
    return found


def _read(path: Path, dtype: torch.dtype, shape: list[int], start: int, end: int) -> torch.Tensor:
    out = torch.empty(shape, dtype=dtype).contiguous(memory_format=torch.channels_last)
    staging = bytearray(end - start)
    with open(path, "rb") as f:
        view = memoryview(staging)
        done = 0
        while done < len(staging):  # pread may return short reads for large tensors
            got = os.preadv(f.fileno(), [view[done:]], start + done)
            if got <= 0:
                raise OSError(f"short read from {path.name}")
            done += got
    out.copy_(torch.frombuffer(staging, dtype=dtype).view(shape))
    return out


def to_channels_last(module: torch.nn.Module, folder: str | Path | None) -> dict[str, int]:
    """Make ``module``'s 4-D conv weights NHWC; re-read from ``folder``'s files where they match."""
    index = _index(Path(folder)) if folder and Path(folder).is_dir() else {}
    counts = {"from_file": 0, "copied": 0}
    with torch.no_grad():
        for name, param in module.named_parameters():
            if param.dim() != 4 or param.is_contiguous(memory_format=torch.channels_last):
                continue
            entry = index.get(name)
            if entry and entry[1] == param.dtype and list(entry[2]) == list(param.shape):
                param.data = _read(*entry)
                counts["from_file"] += 1
            else:  # converted while loading: already private memory, so a copy frees the old one
                param.data = param.data.contiguous(memory_format=torch.channels_last)
                counts["copied"] += 1
    return counts
