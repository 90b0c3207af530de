"""The load's progress as pings report it: phases, bytes, the rate over the last seconds, time left."""

from __future__ import annotations

import logging

from model_server.loading.progress import LoadProgress, human_bytes, human_seconds


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_nothing_before_the_first_phase_and_done_with_each_phase_timed_after():
    clock = Clock()
    progress = LoadProgress(clock, log_every=3600)
    assert progress.status() is None
    progress.start("loading", "starting")
    clock.now += 2
    progress.start("converting", "to bfloat16")
    clock.now += 30
    status = progress.status()
    assert status.phase == "converting" and status.seconds == 30 and status.bytes_total is None
    assert status.finished == {"loading": 2.0}
    progress.start("loading", "the weights")  # a phase met twice adds up
    clock.now += 3
    progress.end()
    done = progress.status()
    assert done.phase == "done" and done.finished == {"loading": 5.0, "converting": 30.0}


def test_a_download_reports_bytes_rate_and_time_left_from_the_recent_rate():
    clock = Clock()
    progress = LoadProgress(clock, log_every=3600)
    progress.start("downloading", "org/model: 3 files", total_bytes=10_000_000, done_bytes=1_000_000)
    for _ in range(40):  # 20 s at 100 KB/s...
        clock.now += 0.5
        progress.add(50_000)
    for _ in range(20):  # ...then 10 s at 200 KB/s: the rate follows the link as it is now
        clock.now += 0.5
        progress.add(100_000)
    status = progress.status()
    assert status.bytes_done == 1_000_000 + 2_000_000 + 2_000_000
    assert 190_000 <= status.rate_bytes_per_second <= 210_000
    assert abs(status.eta_seconds - 5_000_000 / status.rate_bytes_per_second) < 1


def test_a_failed_load_keeps_the_phase_it_failed_in(caplog):
    clock = Clock()
    progress = LoadProgress(clock, log_every=3600)
    with caplog.at_level(logging.INFO):
        progress.start("downloading", "org/model", total_bytes=100, done_bytes=40)
    clock.now += 1
    status = progress.status()  # no end(): the worker never ends a phase that raised
    assert status.phase == "downloading" and status.bytes_done == 40
    assert "already here, resuming" in caplog.text


def test_amounts_read_like_a_person_wrote_them():
    assert human_bytes(999) == "999 B" and human_bytes(3_400_000_000) == "3.4 GB" and human_bytes(1500) == "1.5 KB"
    assert human_seconds(42) == "42 s" and human_seconds(600) == "10 min" and human_seconds(7200) == "2.0 h"


def test_a_halted_phase_stops_logging_and_keeps_its_counters(caplog):
    import time

    progress = LoadProgress(log_every=0.05)
    with caplog.at_level(logging.INFO):
        progress.start("downloading", "org/model", total_bytes=100)
        progress.add(30)
        time.sleep(0.2)
        progress.halt()
        lines = caplog.text.count("downloading: 30 B of 100 B")
        time.sleep(0.2)
    assert lines >= 1 and caplog.text.count("downloading: 30 B of 100 B") == lines
    assert progress.status().phase == "downloading" and progress.status().bytes_done == 30


def _ticks(caplog) -> int:
    return sum("so far" in r.getMessage() for r in caplog.records)


def test_no_periodic_line_outlives_the_work_that_started_its_phase(caplog):
    import time

    caplog.set_level(logging.INFO, logger="model_server.loading.progress")
    progress = LoadProgress(log_every=0.05)
    with progress.over():
        progress.start("converting", "the UNet with the LCM-LoRA fused in, once")
        time.sleep(0.2)
    assert _ticks(caplog) >= 2  # it ticked while the work ran
    seen = _ticks(caplog)
    time.sleep(0.3)
    assert _ticks(caplog) == seen and progress.status().phase == "done"
    try:
        with progress.over():
            progress.start("compiling", "the UNet")
            raise RuntimeError("failed")
    except RuntimeError:
        pass
    seen = _ticks(caplog)
    time.sleep(0.3)
    assert _ticks(caplog) == seen and progress.status().phase == "compiling"  # halted: the phase it failed in


def test_a_model_switch_ends_its_phases_with_it(caplog, tmp_path, monkeypatch):
    import time

    from model_server.loading import progress
    from tests.model_server.test_models_catalog import make_set, params

    monkeypatch.setattr(progress, "LOG_EVERY", 0.05)
    caplog.set_level(logging.INFO, logger="model_server.loading.progress")
    models, _ = make_set(tmp_path)
    with LoadProgress().over() as start:  # the worker ends the first load's phases so
        models.load_default(start)
    told = []
    models.prepare(params(model="other"), told.append)  # its load starts a "loading" phase and never ends it
    assert "loading model other: loading" in told
    lines = len(caplog.records)
    time.sleep(0.3)  # past LOG_EVERY: a ticker left running would have logged "loading: 0 s so far"
    assert _ticks(caplog) == 0 and len(caplog.records) == lines


def test_what_pings_show_of_a_phase_names_no_server_path():
    progress = LoadProgress(log_every=3600)
    progress.start("converting", "/srv/models/secret-team/my-merge.safetensors to bfloat16, once")
    detail = progress.status().detail
    assert "/srv" not in detail and "secret-team" not in detail and "my-merge.safetensors" in detail
