"""The worker thread: loads the pipeline, then runs one job at a time from the job table.

It never touches the ROUTER socket (sockets are single-threaded); it tells the IO thread that
a job changed by pushing the job id over an inproc socket, and the IO thread does the rest.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import Callable

import msgspec
import zmq
from PIL import Image

from model_server import errors, memory
from model_server.imaging import encode_image, encode_preview
from model_server.jobs.job import Job
from model_server.jobs.memory_budget import MemoryBudget
from model_server.jobs.peaks import PeakTable, job_pixels, shape_of
from model_server.jobs.speed import SpeedTable
from model_server.jobs.table import JobTable
from model_server.loading.progress import LoadProgress
from model_server.logs import job_context
from model_server.engine.annotators import Annotators
from model_server.control.preprocessors import control_maps, inpaint_preview, unit_map
from model_server.factory import make_model_set
from model_server.finishing.hires import generate_hires
from model_server.models.model_set import ModelSet
from model_server.pipeline import JobCancelledError, Pipeline, PipelineLoadError
from model_server.settings import ModelServerSettings
from protocol.transport import expand
from protocol import contract
from protocol.messages import ErrorInfo, ImageInfo, ModelState, StopMode
from protocol.control import IP_ADAPTER, module_named
from protocol.upscalers import DEFAULT_UPSCALER

log = logging.getLogger(__name__)
EVENTS_ADDRESS = "inproc://job-events"


@dataclasses.dataclass
class ModelStatus:
    """The model's state as pings report it. Written here, by the worker thread, as it loads the
    model; the IO thread reads it, and writes ``model_state`` once, to STOPPING, at shutdown."""

    model: str
    model_state: ModelState = ModelState.LOADING
    pipeline: ModelSet | None = None  # once the default model is loaded: the models, one loaded at a time
    error: ErrorInfo | None = None
    load_seconds: float | None = None
    load_started: float = dataclasses.field(default_factory=time.monotonic)
    progress: LoadProgress = dataclasses.field(default_factory=LoadProgress)  # the load's phases, for pings


def _job_error(exc: BaseException) -> ErrorInfo:
    if isinstance(exc, PipelineLoadError):  # a part loaded on first use (the fast preset's) failed
        return exc.error
    text = str(exc)
    if isinstance(exc, MemoryError) or "can't allocate memory" in text or "out of memory" in text.lower():
        return errors.out_of_memory()
    return errors.generation_failed(exc)


class Worker(threading.Thread):
    """The thread that loads the pipeline and runs queued jobs one at a time."""

    def __init__(self, settings: ModelServerSettings, table: JobTable, state: ModelStatus,
                 ctx: zmq.Context, load: Callable[[], Pipeline] | None = None):
        super().__init__(name="model-server-worker", daemon=True)
        self.settings, self.table, self.state, self.ctx = settings, table, state, ctx
        self.models = make_model_set(settings, load)
        self.annotators = Annotators(self.models.controlnets.annotators)  # preprocessors' models, used here only
        measured = expand(settings.cache_dir) if settings.cache_dir else None  # what this host measured, kept there
        self.speeds = SpeedTable(measured)
        self.peaks = PeakTable(measured, self.speeds.host)
        self.budget = MemoryBudget(settings.memory_budget, self.models, self.peaks, settings.vae_tile_above)
        self.stopping = threading.Event()
        # Monotonic time before which no job starts: set when jobs were queued again at a restart, so
        # a gateway that placed one of them elsewhere meanwhile can cancel it here first (it sees
        # this server within a heartbeat of its bind, which comes before the load).
        self.hold_until = 0.0
        self._events: zmq.Socket | None = None

    def notify(self, job_id: str) -> None:
        self._events.send_string(job_id)

    def run(self) -> None:
        self._events = self.ctx.socket(zmq.PUSH)
        self._events.connect(EVENTS_ADDRESS)
        try:
            if not self._load():
                return
            self.stopping.wait(max(0.0, self.hold_until - time.monotonic()))
            used, prepared = False, False
            while not self.stopping.is_set():
                for overdue in self.table.fail_overdue(errors.deadline_passed):  # never started past its deadline
                    self.notify(overdue.id)
                job = self.table.next_job(timeout=0.5)
                if job is None:
                    # Idle for half a second: hand the last job's memory back now, not at its end,
                    # where gc.collect() (holding the GIL) would delay the result fetch that follows
                    # and a queued job would only fault the same memory in again.
                    if used:
                        memory.release_memory()
                        # Read after the release only: a job arriving sooner reuses the last one's leftovers (its
                        # freed heap, weights still resident), so they are not part of what it starts from.
                        self.budget.idle()
                        used = False
                    elif not prepared and self.state.model_state is ModelState.READY:
                        prepared = self._prepare_ahead()  # one-time conversions, stopped when a job arrives
                    continue
                with job_context(job.id, job.request_id):
                    self._run(job)
                used, prepared = True, False  # a job may have switched models: look again when idle
        finally:
            self._events.close(linger=1000)

    def _load(self) -> bool:
        try:
            self.models.load_default(self.state.progress)
        except PipelineLoadError as exc:
            log.error("model load failed: %s", exc.error.message)
            self.state.error, self.state.model_state = exc.error, ModelState.FAILED
            return self._failed()
        except Exception as exc:
            log.exception("model load failed")
            self.state.error = errors.load_crashed(exc)
            self.state.model_state = ModelState.FAILED
            return self._failed()
        self.state.progress.end()
        self.state.pipeline = self.models
        self.state.load_seconds = round(time.monotonic() - self.state.load_started, 2)
        memory.release_memory()
        self.budget.idle()
        self.state.model_state = ModelState.READY
        log.info("model ready after %.1f s", self.state.load_seconds)
        return True

    def _prepare_ahead(self) -> bool:
        try:
            return self.models.prepare_ahead(lambda: self.table.depth > 0 or self.stopping.is_set()
                                             or self.state.model_state is not ModelState.READY)
        except Exception:  # noqa: BLE001  (idle work must never take the worker down; the job path retries)
            log.exception("preparing ahead failed; the first job that needs it does it")
            return True

    def _tell(self, job: Job, detail: str) -> None:
        self.table.record_detail(job, detail)
        self.notify(job.id)

    def _upscale(self, job: Job) -> tuple[ImageInfo, bytes]:
        """An upscale job: its image through its upscaler, and a second one blended in when it names one,
        tile by tile (the tiles are its steps); no model is loaded or switched for it. Any stop cancels
        it: half an upscale is no image."""
        p, source, upscalers = job.params, job.init_image, self.models.upscalers
        name = p.upscaler or DEFAULT_UPSCALER
        names = [name] + ([p.upscaler_2] if p.upscaler_2 and p.upscaler_2_visibility > 0 else [])
        # A1111's "None": the image as it is (its extras tab upscales nothing with it).
        width, height = source.size if name == "None" else contract.upscale_size(source.width, source.height, p)
        counts = [upscalers.tiles(n, source.width, source.height) for n in names]
        self.table.record_tiles(job, sum(counts))
        self.table.record_engine(job, " + ".join(f"upscaler {n}" for n in names))
        self.notify(job.id)
        results, engines = [], []
        for n, before in zip(names, (0, counts[0])):
            def on_tile(done: int, total: int, seconds: float, before=before) -> None:
                self.table.record_step(job, 0, before + done, None)  # tile times would skew generations' s/step
                self.notify(job.id)

            image = upscalers.upscale(n, source, width, height, on_tile, lambda: job.stop_mode)
            if image is None:
                raise JobCancelledError()
            results.append(image)
            described = upscalers.describe(n)
            engines.append(f"upscaler {n} ({described})" if described else f"upscaler {n}")
        if len(results) > 1:
            image = Image.blend(*(r.convert("RGB") for r in results), p.upscaler_2_visibility)
        engine = " + ".join(engines) + (f" at {p.upscaler_2_visibility:g}" if len(results) > 1 else "")
        self.table.record_engine(job, engine)
        image, written = self._restore_faces(job, image, engine)
        data, media_type = encode_image(image, written, p.seed, name)
        return ImageInfo(index=0, seed=p.seed, media_type=media_type, width=image.width, height=image.height,
                         size_bytes=len(data)), data

    def _detect(self, job: Job) -> tuple[ImageInfo, bytes]:
        """A detect job (A1111's /controlnet/detect): its image through one preprocessor, no model."""
        p = job.params
        unit = p.controls[0]
        module = module_named(unit.module)
        self.table.record_engine(job, f"preprocessor {module}")
        if module == "inpaint_only":  # without a mask there is nothing to mark: the image as the module sees it
            image = job.init_image if job.mask is None else inpaint_preview(job.init_image, job.mask)
        else:  # pixel-perfect: at the image's own size
            image = unit_map(unit, job.init_image, min(job.init_image.size), p.seed, self.annotators)
        data, media_type = encode_image(image, p, p.seed, f"preprocessor {module}")
        return ImageInfo(index=0, seed=p.seed, media_type=media_type, width=image.width, height=image.height,
                         size_bytes=len(data)), data

    @staticmethod
    def _detected_maps(job: Job, maps: list, first: int) -> list[tuple[ImageInfo, bytes]]:
        """The maps of the units that asked for theirs (return_map), as images after the generated ones."""
        p, out = job.params, []
        for unit_index, (unit, made) in enumerate(zip(p.controls, maps)):
            if not unit.return_map or module_named(unit.module) == IP_ADAPTER:
                continue
            image = made.image if made.mask is None else inpaint_preview(made.image, made.mask)
            data, media_type = encode_image(image, p, p.seed, "", described=False)
            out.append((ImageInfo(index=first + len(out), seed=p.seed, media_type=media_type, width=image.width,
                                  height=image.height, size_bytes=len(data), control_map=unit_index), data))
        return out

    def _restore_faces(self, job: Job, image, engine: str):
        """``image`` with its faces restored when the job asks; the job's engine says by what, and the
        parameters returned (for the image's infotext) name the restorer that ran."""
        faces = job.params.face_restoration
        if faces is None:
            return image, job.params
        self._tell(job, "restoring faces")
        restorers = self.models.faces
        image, count, name = restorers.restore(faces, image, lambda: job.stop_mode)
        described = restorers.describe(name)
        self.table.record_engine(job, f"{engine} + faces {name}" + (f" ({described})" if described else "")
                                 + f": {count} restored")
        self.table.record_detail(job, "")  # the next image's steps are not "restoring faces"
        return image, msgspec.structs.replace(job.params, face_restoration=msgspec.structs.replace(faces, model=name))

    def _measured(self, job: Job, model: str, engine: str, start_bytes: int, peak: int,
                  source_pixels: int = 0) -> None:
        """A finished job's peak: shown in its view and kept for the memory budget's predictions."""
        self.table.record_peak(job, peak)
        p = job.params
        self.peaks.record(model, shape_of(p, engine), job_pixels(p, source_pixels), start_bytes, peak)

    def _failed(self) -> bool:
        self.state.progress.halt()  # the phase it failed in stays in /health, without more log lines
        return False

    def _run(self, job: Job) -> None:
        p = job.params
        pipeline = self.models
        self.notify(job.id)
        images: list[tuple[ImageInfo, bytes]] = []
        started = time.monotonic()
        start_bytes = memory.rss_bytes()  # the rise is measured from here (from the new model's after a switch)
        sampler = memory.PeakSampler().start()
        try:
            if p.mode in ("upscale", "detect"):
                images.append(self._upscale(job) if p.mode == "upscale" else self._detect(job))
                self._measured(job, "", "", start_bytes, sampler.stop(), images[0][0].width * images[0][0].height)
                self.table.succeed(job, images)
                log.info("%s in %.2f s", "upscaled" if p.mode == "upscale" else "preprocessed",
                         time.monotonic() - started)
                return
            model, switch, lora_hashes = pipeline.prepare(p, lambda text: self._tell(job, text), lambda: job.stop_mode)
            if switch is not None:  # what the job starts from is the new model's, not the old one's
                start_bytes = switch.rss_bytes
            self.table.record_model(job, model, switch, lora_hashes)
            engine = pipeline.engine(p)
            self.table.record_engine(job, engine)
            log.info("started: %s, %dx%d, %d steps, n=%d, scheduler=%s, LoRAs %s, on %s", model, p.width, p.height,
                     p.steps, p.n, p.scheduler, ", ".join(f"{r.name}:{r.weight:g}" for r in p.loras) or "none",
                     engine)
            self.notify(job.id)
            # The control maps, made once for the job's images (a preprocessor is a few milliseconds).
            control = (control_maps(p, job.control_images, job.init_image, job.mask, p.seed, self.annotators,
                                    job.control_masks) if p.controls else None)
            for index in range(p.n):
                seed = (p.seed + index) % 2**32  # A1111's convention: image i uses seed + i

                def on_step(step: int, seconds: float, preview=None, index=index) -> None:
                    if step == 1 and index == 0:  # a part loaded on first use may have failed meanwhile
                        self.table.record_engine(job, pipeline.engine(p))
                    if preview is not None:
                        self.table.record_preview(job, step, encode_preview(preview))
                    self.table.record_step(job, index, step, seconds)
                    self.notify(job.id)

                if p.hires is not None:
                    image = generate_hires(pipeline, pipeline.upscalers, p, seed, on_step, lambda: job.stop_mode,
                                           lambda text: self._tell(job, text), control)
                else:
                    image = pipeline.generate(p, seed, on_step, lambda: job.stop_mode, init_image=job.init_image,
                                              mask=job.mask, control=control)
                image, written = self._restore_faces(job, image, pipeline.engine(p))
                data, media_type = encode_image(image, written, seed, pipeline.model_id, lora_hashes)
                images.append((ImageInfo(index=index, seed=seed, media_type=media_type, width=image.width,
                                         height=image.height, size_bytes=len(data)), data))
                if self.table.stopped_early(job) is StopMode.INTERRUPT:
                    break
            peak, seconds = sampler.stop(), time.monotonic() - started
            made = len(images)
            images += self._detected_maps(job, control or [], made)
            if not job.interrupted:
                self._measured(job, model, engine, start_bytes, peak)
            self.table.succeed(job, images)
            if job.model_switch is None and not job.interrupted:  # a load or a cut-short run is no measure of speed
                self.speeds.record(model, p, job.step_seconds, job.timed_steps, seconds, made, peak)
            log.info("succeeded in %.2f s (%.2f s/step)", seconds, job.seconds_per_step or 0)
        except JobCancelledError:
            self.table.mark_cancelled(job, images)
            why = "stopped by the shutdown (failed, retryable)" if job.stop_error else "cancelled"
            log.info("%s after %.2f s", why, time.monotonic() - started)
        except PipelineLoadError as exc:  # a part it names could not load: said in the job, no traceback
            log.warning("failed: %s", exc.error.message)
            self.table.fail(job, exc.error)
        except Exception as exc:  # a failed job must never kill the worker
            log.exception("failed")
            self.table.fail(job, _job_error(exc))
        finally:
            sampler.stop()
            job.init_image = job.mask = None  # the decoded uploads are needed no more
            job.control_images = job.control_masks = []
            self.notify(job.id)
