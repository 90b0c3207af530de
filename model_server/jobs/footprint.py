"""A job's peak memory, predicted at submit, and what to lower when it would not fit the budget.

The peak is the resident memory the job starts from plus its rise. The start: the process's resident memory
between jobs (the worker's last idle reading) when the job's model is in memory; else that, less what the models
that would make room for it hold, plus what loading it added when it was last loaded here, else its weight files,
else its family's full-size footprint (``Family.resident_bytes``). The rise: measured on this host for the same
model and kind of job (model_server.jobs.peaks), at the nearest size, scaled to this size by the prior's shape; a
kind never run here is the plain job's measured rise plus the prior parts for what it adds; a model never run
here is the prior alone. The prior was measured on the bench machine (docs/performance.md "Memory budget") for
full-size models and is scaled by the model's size, so a small model is not refused for a big one's needs. The
least peak measured for the same kind and size is a floor too: a rise smoothed down by jobs that started on the
last one's leftovers (its freed heap, before the worker's idle release) would under-predict a job that must
allocate its memory again.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import msgspec

from model_server.families import FAMILIES
from model_server.jobs.peaks import PeakEntry, PeakTable, job_pixels, shape_of
from protocol.control import ANNOTATOR_MODULES, IP_ADAPTER, module_named
from protocol.messages import GenerationParams, runs_diffusion

GIB = 2**30
RUNTIME_BYTES = int(0.45 * GIB)  # Python, torch, diffusers and OpenVINO imported, no model (measured 0.43)
# A first job's rise for a full-size model of a family (SD v1.4-shaped, bf16; bench machine): its weights coming
# back (on torch, idle weights are mapped but not resident: SD_RELEASE_IDLE_WEIGHTS), a fixed part (the text
# encoder's pass, the scheduler) and parts per megapixel of the largest pass (UNet and VAE activations): one up to
# the size above which the VAE works in tiles (SD_VAE_TILE_ABOVE), a smaller one above it (the UNet's alone).
# Measured (bench.memory and the table beside it in docs/performance.md): OpenVINO 0.42 GiB at 512x512, 0.84 at
# 768x768, 0.86-1.08 at 1024x1024; torch 1.86 at 512x512, 2.22 at 768x768 and the same at 1024x1024.
_WEIGHTS_BACK = {"openvino": 0.0, "torch": 1.5 * GIB}
_RISE = {"openvino": (0.17 * GIB, 1.0 * GIB, 0.2 * GIB), "torch": (0.1 * GIB, 1.1 * GIB, 0.0),
         # An upscale job: its upscaler and one tile's activations (bounded by UPSCALE_TILE), and the result held
         # as float and as bytes; a detect job: one annotator at its resolution (normal_bae's is the largest).
         "upscale": (0.6 * GIB, 0.05 * GIB, 0.05 * GIB), "detect": (1.45 * GIB, 0.05 * GIB, 0.05 * GIB)}
# What a part adds to a full-size SD 1.x job (bench machine, docs/performance.md "Control" and "Finishing").
CONTROLNET = {"openvino": int(1.15 * GIB), "torch": int(0.45 * GIB)}
IP_ADAPTER_BYTES = int(1.3 * GIB)
ANNOTATOR = {"normal_bae": int(1.45 * GIB)}  # the others measured 0.29-0.67 GiB: 0.7 stands for them
ANNOTATOR_OTHER = int(0.7 * GIB)
FACES = int(0.4 * GIB)
# Image-to-image and inpainting: the VAE encoder's pass (on torch beside an OpenVINO decoder: its weights come
# back) at the job's size, in tiles above SD_VAE_TILE_ABOVE (measured: a 512x512 img2img job rose 0.1-0.3 GiB
# more than a txt2img one).
ENCODE_PER_MPX = 0.8 * GIB
LORA_ON_TORCH = 0.7  # of the model: its torch UNet faulted back in when a LoRA job leaves OpenVINO
# A kind of job this host has not run yet is priced with a margin on what is not measured here (the priors are
# for the bench's model and machine, and a job under-predicted could take the process down) and on the hires fix's
# passes added up.
UNMEASURED_MARGIN = 1.5
# A plain text-to-image job of a model never run here is the kind the prior was measured on, so it needs less:
# only another machine's difference (bench.memory: with 1.5 on the whole prior the first job of a cold server was
# predicted 12% high; with 1.2 on its activations, 5% on OpenVINO and 3% on torch).
PLAIN_PRIOR_MARGIN = 1.2
# A size an OpenVINO model has not run yet: compiled for it at its first step (the IR read again, the plugin's
# scratch); bench.memory: the first 768x768 job 5% over the rise scaled from 512x768's without it.
NEW_SIZE = {"openvino": 0.1 * GIB}
TINY_BYTES = 64 * 2**20
_WEIGHT_FILES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth")


@dataclasses.dataclass(frozen=True)
class Prediction:
    """A job's predicted peak and what it is made of (the job's view and a refusal show it)."""

    peak_bytes: int
    start_bytes: int
    rise_bytes: int
    basis: str  # "measured" (this kind at this size), "scaled" (this kind, another size), "parts", "prior"


def weight_bytes(source: str, kind: str) -> int | None:
    """What a model's weight files take on disk (a folder's or a single file's; None: not on this disk)."""
    if kind == "tiny":  # the random-weight test models, made on first use: a few MB
        return TINY_BYTES
    if kind not in ("folder", "single_file"):
        return None
    path = Path(source)
    try:
        if path.is_file():
            return path.stat().st_size
        return sum(f.stat().st_size for f in path.rglob("*") if f.suffix in _WEIGHT_FILES and f.is_file()) or None
    except OSError:
        return None


# Whatever the model: the decoded image as floats and bytes, the PNG being written (measured on the tiny model:
# 0.05 GiB at 512x512, 0.19 at 1536x1536).
IMAGE_PER_MPX = 0.08 * GIB


def _backend(engine: str) -> str:
    """What the priors know of an engine string: openvino or torch."""
    return "openvino" if engine.startswith("openvino") else "torch"


def _rise_prior(engine_kind: str, pixels: int, ratio: float, tile_above: int, margin: float = 1.0) -> int:
    """The prior rise of a model whose weights are ``ratio`` of its family's full size: weights grow with the
    square of a network's width and activations with the width, hence the root for the activations. ``margin``
    is on the activations: the weights coming back are the model's own size."""
    kind = engine_kind if engine_kind in _RISE else "torch"
    fixed, per_mpx, tiled_per_mpx = _RISE[kind]
    whole = _untiled(pixels, tile_above)
    activations = (ratio ** 0.5 * (fixed + (per_mpx * whole + tiled_per_mpx * (pixels - whole)) / 1e6)
                   + IMAGE_PER_MPX * pixels / 1e6)
    return int(_WEIGHTS_BACK.get(kind, 0.0) * ratio + margin * activations)


def _untiled(pixels: int, tile_above: int) -> int:
    """The pixels the VAE works on whole: all of them, or the tiling size's (SD_VAE_TILE_ABOVE; 0: never tiles)."""
    return min(pixels, tile_above ** 2) if tile_above else pixels


class Footprints:
    """Predicts jobs' peaks from the host's measurements (see the module)."""

    def __init__(self, peaks: PeakTable, tile_above: int):
        self.peaks = peaks
        self.tile_above = tile_above  # SD_VAE_TILE_ABOVE
        self.own: dict[str, int] = {}  # model name -> what loading it added to the RSS, when last loaded here
        self.weights: dict[str, int] = {}  # model name -> its weights' bytes as loaded (the pipeline says)

    def model_scale(self, model: str, family: str, start_bytes: int) -> float:
        """The model's weights against its family's full size: scales the priors (a tiny model needs little).
        From its loaded weights when known (on torch they are mapped, not resident, after the load), else from
        where the job would start."""
        weights = self.weights.get(model)
        if weights:
            own, full = weights, FAMILIES[family].weights_bytes
        elif model in self.own:
            own, full = self.own[model], FAMILIES[family].resident_bytes - RUNTIME_BYTES
        else:
            own, full = start_bytes - RUNTIME_BYTES, FAMILIES[family].resident_bytes - RUNTIME_BYTES
        return min(4.0, max(0.0004, own / full))

    def own_bytes(self, model: str, family: str, source: str, kind: str) -> int:
        """What loading ``model`` adds to the RSS: measured when it was loaded here before, else its weight files
        (bf16 at most), else its family's full size."""
        if model in self.own:
            return self.own[model]
        on_disk = weight_bytes(source, kind)
        return on_disk if on_disk is not None else FAMILIES[family].resident_bytes - RUNTIME_BYTES

    def start_for(self, model: str, family: str, source: str, kind: str, in_memory: bool, idle_bytes: int,
                  others_bytes: int = 0) -> int:
        """The resident memory the job would start from: the idle RSS when its model is in memory, else the idle
        RSS less ``others_bytes`` (what the models that would make room for it hold) plus its own."""
        if in_memory:
            return idle_bytes
        return max(RUNTIME_BYTES, idle_bytes - others_bytes) + self.own_bytes(model, family, source, kind)

    def predict(self, model: str, family: str, params: GenerationParams, engine: str, start_bytes: int,
                source_pixels: int = 0) -> Prediction:
        """The job's peak when it starts from ``start_bytes`` (``start_for``), its UNet run by ``engine``."""
        shape, pixels = shape_of(params, engine), job_pixels(params, source_pixels)
        kind = _backend(engine)
        if not runs_diffusion(params):  # no model runs: the upscaler's or annotator's own, full size
            kind, scale = params.mode, 1.0
        else:
            scale = self.model_scale(model, family, start_bytes)
        near = self.peaks.nearest(model, shape, pixels)
        if near is not None:
            rise = int(self._rescaled(kind, near, pixels))
            if near.pixels != pixels:  # a size not run yet: OpenVINO compiles for it
                rise += int(NEW_SIZE.get(kind, 0) * scale ** 0.5)
            floor = near.least_peak_bytes + rise - near.rise_bytes  # the least peak it reached, moved by the size
            return Prediction(max(start_bytes + rise, floor), start_bytes, rise,
                              "measured" if near.pixels == pixels else "scaled")
        plain = msgspec.structs.replace(params, hires=None, controls=[], face_restoration=None, loras=[],
                                        mode="txt2img" if runs_diffusion(params) else params.mode)
        passes = [pixels] + ([params.width * params.height] if params.hires is not None else [])
        margin = PLAIN_PRIOR_MARGIN if params == plain else UNMEASURED_MARGIN
        rise, basis = int(self.parts(params, engine, scale, family) * margin), "parts"
        # The hires fix's two passes, summed with the margin (measured on the tiny model: its first hires job rose
        # 1.4x what its plain jobs' measured rises added up to); one pass measured here needs none.
        measured_margin = margin if len(passes) > 1 else 1.0
        for size in passes:
            base = self.peaks.nearest(model, shape_of(plain, engine), size)  # the plain job parts() adds to
            if base is not None:
                rise += int(self._rescaled(kind, base, size) * measured_margin)
            else:
                rise, basis = rise + self._prior(kind, size, scale, margin), "prior"
        return Prediction(start_bytes + rise, start_bytes, rise, basis)

    def _prior(self, kind: str, pixels: int, ratio: float, margin: float = 1.0) -> int:
        return _rise_prior(kind, pixels, ratio, self.tile_above, margin)

    def _rescaled(self, kind: str, entry: PeakEntry, pixels: int) -> float:
        """``entry``'s measured rise moved to ``pixels`` along the prior's shape."""
        return entry.rise_bytes * self._prior(kind, pixels, 1.0) / self._prior(kind, entry.pixels, 1.0)

    def parts(self, params: GenerationParams, engine: str, scale: float, family: str) -> int:
        """What the job's extras add (priors, scaled by the model's size): control units, faces, LoRAs."""
        kind = _backend(engine)
        extra = 0.0
        for unit in params.controls:
            module = module_named(unit.module)
            if module == IP_ADAPTER:
                extra += IP_ADAPTER_BYTES * scale
                continue
            extra += CONTROLNET[kind] * scale
            if module in ANNOTATOR_MODULES:  # an annotator is full size whatever the model
                extra += ANNOTATOR.get(ANNOTATOR_MODULES[module].annotator, ANNOTATOR_OTHER)
        if params.face_restoration is not None:
            extra += FACES
        if params.mode in ("img2img", "inpaint"):
            extra += ENCODE_PER_MPX * scale ** 0.5 * _untiled(params.width * params.height, self.tile_above) / 1e6
        if params.loras and "runs on torch" in engine:  # the OpenVINO model's job on torch: its UNet comes back
            extra += LORA_ON_TORCH * scale * (FAMILIES[family].resident_bytes - RUNTIME_BYTES)
        return int(extra)

