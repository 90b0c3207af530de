"""What the model server needs from a text-to-image pipeline: the interface every backend meets,
its errors and the sampler step limits. The factory that picks a backend is ``factory``, so
this module imports no implementation (and none imports it back in a circle)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable, Protocol

from model_server import errors
from model_server.errors import PipelineLoadError, load_error  # noqa: F401  (part of the interface)
from protocol.errors import ErrorCode
from protocol.messages import MAX_STEPS, SCHEDULERS, ErrorInfo, GenerationParams, StopMode  # noqa: F401  (re-exported)
from protocol.presets import PRESETS

if TYPE_CHECKING:
    from PIL.Image import Image


# LCMScheduler's schedule has original_inference_steps (50) points; every other sampler here runs
# the protocol's whole range (tests/model_server/test_scheduler_steps.py runs each one).
LCM_MAX_STEPS = 50


def max_steps(scheduler: str) -> int:
    return LCM_MAX_STEPS if scheduler == "lcm" else MAX_STEPS


class JobCancelledError(Exception):
    """Raised inside ``generate`` when ``should_stop`` turned true; the job ends cancelled."""


class Pipeline(Protocol):
    """A text-to-image backend as the worker drives it."""

    model_id: str

    def optimizations(self) -> dict[str, str | int | float | bool | None]:
        """The settings in force (dtype, attention, threads...), reported by /health."""

    def schedulers(self) -> list[str]:
        """Scheduler names ``generate`` accepts."""

    def unavailable_presets(self) -> dict[str, str]:
        """Presets (protocol.presets) this pipeline cannot run, with the reason."""

    def max_steps(self, scheduler: str) -> int:
        """The most steps ``scheduler`` can run (checked at submit, so no job fails mid-way)."""

    def engine(self, params: GenerationParams) -> str:
        """What will run this job's UNet, and why when it is not the usual one (shown in the job)."""

    def apply_loras(self, loras: "list[tuple[str, Path, float]]") -> None:
        """Use exactly these LoRAs (name, file, weight) for the next ``generate`` calls; [] for none.
        Raises PipelineLoadError when one cannot be loaded."""

    def loaded_loras(self) -> set[str]:
        """The LoRAs in memory now (kept for later jobs within a budget)."""

    def apply_controlnets(self, controlnets: list) -> None:
        """Use these ControlNets and IP-Adapter (name, ``control.catalog.ControlModel``), in unit order, for the
        next ``generate`` calls that pass control maps; others loaded before may be dropped. Raises
        PipelineLoadError (here or in ``prepare_parts``) when one cannot load."""

    def loaded_controlnets(self) -> set[str]:
        """The ControlNets in memory now."""

    def prepare_parts(self, params: GenerationParams, report: Callable[[str], None],
                      stop: Callable[[], StopMode | None]) -> None:
        """Make what this job needs that is made once (the fast preset's OpenVINO UNet), before its
        first step, telling the job with ``report`` what it waits for; raise JobCancelledError when
        ``stop()`` says CANCEL meanwhile."""

    def prepare_ahead(self, stop: Callable[[], bool]) -> bool:
        """In idle time: make a one-time part a later job may need, stopping as soon as ``stop()``
        says so (a job arrived). True when nothing is left to prepare; False when stopped."""

    def resize_latents(self, latents, width: int, height: int, upscaler: str):
        """Latents ``generate`` returned, resized for a ``width`` x ``height`` image by a latent upscaler
        (protocol.upscalers.LATENT_UPSCALERS): the hires fix's way without a decode."""

    def generate(self, params: GenerationParams, seed: int, on_step: Callable[[int, float, "Image | None"], None],
                 stop: Callable[[], StopMode | None], init_image: "Image | None" = None,
                 mask: "Image | None" = None, output: str = "image", control=None) -> "Image":
        """One image. Calls ``on_step(step, seconds, preview)`` after each step (1-based, up to
        ``steps_run(params)``); preview is a latent-resolution PIL image when ``params.preview`` is
        set, else None. At the first step boundary where ``stop()`` says CANCEL it raises
        :class:`JobCancelledError`; where it says INTERRUPT or SKIP it stops denoising and returns the
        image decoded so far. ``init_image`` (img2img: RGB at the job's size) is what denoising
        starts from, ``params.strength`` of the way into the schedule; with ``mask`` (inpaint: L,
        white repaints) only the white parts change. ``output="latents"`` returns the latents undecoded
        (the backend's own type), which ``resize_latents`` takes and ``init_image`` accepts in place of an
        image (the hires fix); ``output="upscale"`` is an image the hires fix will upscale in pixels, which a
        backend may decode so that it keeps no memory for this size. ``control``: one
        ``model_server.control.preprocessors.ControlMap`` per ``params.controls`` unit, steering the
        denoising through the ControlNets ``apply_controlnets`` set."""


def preset_unavailable(preset: str, why: str, unavailable, code: ErrorCode) -> ErrorInfo:
    """Why a preset cannot run here, naming the ones that can: refused at submit, or failed on first use."""
    others = [name for name in PRESETS if name not in unavailable and name != preset]
    return errors.preset_not_here(preset, why, others, code)
