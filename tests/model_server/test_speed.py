"""This host's measured speeds (model_server/jobs/speed.py) and the deadline check built on them."""

from __future__ import annotations

import msgspec
import pytest

from model_server.errors import Rejection
from model_server.jobs import deadlines
from model_server.jobs.speed import SpeedTable
from protocol.messages import GenerationParams, HiresFix, HostInfo, LoraRef

HOST = HostInfo(cpu="Test CPU", threads=4, isa="avx2")


def _params(**kw) -> GenerationParams:
    fields = {"width": 512, "height": 512, "steps": 20, "preset": "quality", **kw}
    return GenerationParams(prompt="a cat", seed=1, **fields)


def test_a_plain_job_is_measured_and_predicts_others_by_size_count_and_strength(tmp_path):
    speeds = SpeedTable(tmp_path, HOST)
    assert speeds.predict("m", _params()) is None  # nothing measured yet
    speeds.record("m", _params(), step_seconds=20.0, steps=20, seconds=23.0, images=1, peak_rss_bytes=3 << 30)
    assert speeds.predict("m", _params()) == 23.0  # 20 steps x 1 s + 3 s per image
    assert speeds.predict("m", _params(n=2)) == 46.0
    assert speeds.predict("m", _params(steps=10)) == 13.0
    assert speeds.predict("m", _params(width=1024, height=1024)) == 92.0  # 4x the pixels
    img2img = _params(mode="img2img", strength=0.5)
    assert speeds.predict("m", img2img) == 13.0  # 10 of its 20 steps run (measured txt2img stands in)
    hires = speeds.predict("m", _params(hires=HiresFix(scale=2, strength=0.5)))
    assert hires == 23.0 + 10 * 4.0 + 12.0  # the second pass at 4x the pixels, half its steps
    assert speeds.predict("other", _params()) is None and speeds.predict("m", _params(preset="fast")) is None
    entry = speeds.entries()[0]
    assert (entry.seconds_per_step, entry.seconds_per_image, entry.peak_rss_bytes, entry.steps) == (1.0, 3.0,
                                                                                                   3 << 30, 20)


def test_measurements_are_smoothed_kept_per_host_and_only_of_plain_jobs(tmp_path):
    speeds = SpeedTable(tmp_path, HOST)
    speeds.record("m", _params(), 20.0, 20, 20.0, 1)
    speeds.record("m", _params(), 40.0, 20, 40.0, 1)
    assert speeds.entries()[0].seconds_per_step == pytest.approx(0.7 * 1 + 0.3 * 2)
    for odd in (_params(loras=[LoraRef(name="ink")]), _params(hires=HiresFix()), _params(mode="upscale")):
        speeds.record("m", odd, 99.0, 1, 99.0, 1)
    assert len(speeds.entries()) == 1
    again = SpeedTable(tmp_path, HOST)  # a restart on this host keeps them
    assert again.entries() == speeds.entries()
    other_cpu = SpeedTable(tmp_path, msgspec.structs.replace(HOST, isa="avx512+bf16"))
    assert other_cpu.entries() == []  # another CPU measures afresh
    (tmp_path / again.path.name).write_text("not json")
    assert SpeedTable(tmp_path, HOST).entries() == []  # unreadable: measured afresh, never fatal


class _Queue:
    def __init__(self, jobs_ahead: float):
        self.ahead = jobs_ahead

    def seconds_ahead(self, predict) -> float:
        return self.ahead


def test_a_deadline_is_refused_with_the_prediction_and_a_faster_preset_or_size_that_fits(tmp_path):
    speeds = SpeedTable(tmp_path, HOST)
    speeds.record("m", _params(), 20.0, 20, 23.0, 1)  # quality: 23 s
    speeds.record("m", _params(preset="fast", steps=4), 2.0, 4, 3.0, 1)  # fast: 3 s
    job = _params(deadline_seconds=20)
    with pytest.raises(Rejection) as refused:
        deadlines.check(job, _Queue(5.0), speeds, "m", {})
    error = refused.value.error
    assert error.code.value == "deadline" and error.field == "deadline_seconds"
    assert "about 28 s" in error.message and "5 s for the jobs ahead" in error.message
    assert "the fast preset (about 8 s)" in error.hint and "384x384" in error.hint
    with pytest.raises(Rejection) as no_fast:
        deadlines.check(job, _Queue(5.0), speeds, "m", {"fast": "no LCM-LoRA"})
    assert "fast" not in no_fast.value.error.hint
    with pytest.raises(Rejection) as busy:
        deadlines.check(job, _Queue(30.0), speeds, "m", {})
    assert "jobs ahead alone take about 30 s" in busy.value.error.hint
    deadlines.check(_params(deadline_seconds=30), _Queue(5.0), speeds, "m", {})  # fits
    deadlines.check(_params(deadline_seconds=1, preset="balanced"), _Queue(99.0), speeds, "m", {})  # unmeasured
    deadlines.check(_params(), _Queue(99.0), speeds, "m", {})  # no deadline
