"""The memory budget kept at submit: each job's peak predicted (model_server.jobs.footprint) and a job over
the budget (model_server.budget) refused, saying what to lower, before it could take the process down.

The IO thread predicts and checks; the worker writes what it measures (the idle resident memory, each model's
after its load, each job's peak: model_server.jobs.peaks), so a prediction uses the latest readings without a
lock (each is one assignment). The check assumes the job runs alone, as a model server runs its jobs.
"""

from __future__ import annotations

import msgspec

from model_server import budget, errors, memory
from model_server.budget import Budget
from model_server.jobs.footprint import GIB, RUNTIME_BYTES, Footprints, Prediction
from model_server.jobs.peaks import PeakTable
from model_server.models.model_set import ModelSet
from protocol.messages import BudgetStatus, GenerationParams, runs_diffusion

_SIZE_STEPS = 16  # sizes tried for the advice, from the job's down to a quarter of its sides


def _gib(value: int) -> str:
    return f"{value / GIB:.2f} GiB"


class MemoryBudget:
    """The budget, the predictions and the refusals of one model server (see the module)."""

    def __init__(self, setting: str, models: ModelSet, peaks: PeakTable, tile_above: int):
        self.setting, self.models = setting, models  # MEMORY_BUDGET, checked at start
        self.footprints = Footprints(peaks, tile_above)  # SD_VAE_TILE_ABOVE: what the VAE works on whole
        self.idle_bytes = memory.rss_bytes()  # the worker's latest reading between jobs
        models.loaded_hook, models.keep = self._loaded, self._keep

    # --- the worker's readings ---------------------------------------------------------------------

    def _loaded(self, model: str, before_bytes: int, after_bytes: int) -> None:
        """A model was just loaded (at start or by a switch): what it added, for jobs that would load it again."""
        self.idle_bytes = after_bytes
        self.footprints.own[model] = max(0, after_bytes - max(before_bytes, RUNTIME_BYTES))
        weights_mb = self.models.optimizations().get("weights_mb")
        if isinstance(weights_mb, (int, float)) and weights_mb > 0:
            self.footprints.weights[model] = int(weights_mb * 2**20)

    def idle(self) -> None:
        self.idle_bytes = memory.rss_bytes()

    @property
    def budget(self) -> Budget:
        """The budget now: read at each use, so a container's limit changed while it runs (Kubernetes' in-place
        resize) holds from the next job (a few small files)."""
        return budget.resolve(self.setting)

    # --- the IO thread's checks --------------------------------------------------------------------

    def predict(self, params: GenerationParams, source_pixels: int = 0) -> Prediction | None:
        """The job's predicted peak (None: the model is unknown, which the admission refuses anyway)."""
        start = self._start(params)
        return None if start is None else self._price(params, start, source_pixels)

    def _start(self, params: GenerationParams) -> int | None:
        """What the job would start from (None: an unknown model). The same for every variant of a job, so the
        advice works it out once (it may look at a model's files on disk)."""
        if not runs_diffusion(params):  # an upscale or detect job: no model runs, the loaded one stays
            return self.idle_bytes
        model = self.models.catalog.find(params.model)
        if model is None:
            return None
        resident = self.models.resident_names()
        # Another model's job may drop every other model first (ModelSet): it is priced as if they went.
        others = sum(self._own(name) for name in resident if name != model.name)
        return self.footprints.start_for(model.name, model.family, model.source, model.kind, model.name in resident,
                                         self.idle_bytes, others)

    def _price(self, params: GenerationParams, start: int, source_pixels: int) -> Prediction:
        """The job's peak from ``start`` (``_start``: its model is known)."""
        if not runs_diffusion(params):
            return self.footprints.predict("", "sd1", params, "", start, source_pixels)
        model = self.models.catalog.find(params.model)
        return self.footprints.predict(model.name, model.family, params, self.models.engine_of(model.name, params),
                                       start, source_pixels)

    def _own(self, name: str) -> int:
        found = self.models.catalog.find(name)
        return self.footprints.own_bytes(name, found.family, found.source, found.kind) if found else 0

    def _keep(self, model, params: GenerationParams, names: list[str]) -> bool:
        """The ModelSet's question before it loads ``model`` (worker thread): may the models ``names`` stay in
        memory beside it and the job? Yes when the job's predicted peak with all of them kept is within budget."""
        most = self.budget.bytes
        if not most:
            return True  # no budget: MAX_RESIDENT_MODELS alone bounds them
        memory.release_memory()
        start = memory.rss_bytes() + self.footprints.own_bytes(model.name, model.family, model.source, model.kind)
        return self.footprints.predict(model.name, model.family, params, "", start).peak_bytes <= most

    def check(self, params: GenerationParams, source_pixels: int = 0) -> Prediction | None:
        """The job's prediction, or a Rejection when it is over the budget."""
        prediction, kept = self.predict(params, source_pixels), self.budget
        if prediction is None or not kept.bytes or prediction.peak_bytes <= kept.bytes:
            return prediction
        field, advice = self._advice(params, prediction, source_pixels, kept.bytes)
        raise errors.over_budget(_gib(prediction.peak_bytes), _gib(kept.bytes), kept.source, advice, field)

    def _advice(self, params: GenerationParams, prediction: Prediction, source_pixels: int,
                most: int) -> tuple[str, str]:
        """(the field to lower, what to do): the largest size of the job's shape that fits, else a smaller hires
        scale, fewer control units or no face restoration; else the model itself is too big for the budget."""
        ways: list[str] = []
        field = ""

        def fits(variant: GenerationParams) -> bool:  # every variant starts where the job does
            return self._price(variant, prediction.start_bytes, source_pixels).peak_bytes <= most

        if params.mode not in ("upscale", "detect"):
            for i in range(1, _SIZE_STEPS + 1):
                share = 1 - 0.75 * i / _SIZE_STEPS
                width, height = (max(64, int(side * share) // 64 * 64) for side in (params.width, params.height))
                if (width, height) == (params.width, params.height):
                    continue
                smaller = msgspec.structs.replace(params, width=width, height=height)
                if fits(smaller):
                    ways.append(f"lower the size to {width}x{height}")
                    field = "width"
                    break
        if params.hires is not None and fits(msgspec.structs.replace(params, hires=None)):
            ways.append("turn the hires fix off or lower its scale")
            field = field or "hires"
        if params.controls and fits(msgspec.structs.replace(params, controls=[])):
            ways.append("use fewer control units")
            field = field or "controls"
        if params.face_restoration is not None and fits(
                msgspec.structs.replace(params, face_restoration=None)):
            ways.append("leave face restoration off")
            field = field or "face_restoration"
        if params.mode == "upscale":
            ways.append("upscale a smaller image or by a smaller factor")
            field = "upscale"
        if not ways:
            return "model", (f"The model alone needs about {_gib(prediction.start_bytes)}: use a smaller model "
                             "(or SD_INT8=weights), or give this server more memory (MEMORY_BUDGET).")
        return field, "To fit, " + ", or ".join(ways) + "."

    def status(self) -> BudgetStatus:
        """What /health shows: the budget, its source, the idle resident memory and each model's."""
        kept = self.budget
        return BudgetStatus(budget_bytes=kept.bytes, source=kept.source, idle_bytes=self.idle_bytes,
                            resident={name: self._own(name) for name in self.models.resident_names()})
