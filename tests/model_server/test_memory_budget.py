"""The memory budget: MEMORY_BUDGET and the cgroup limit it defaults to, the peaks measured per kind of job,
the peak predicted from them, and the refusal at submit that says what to lower."""

from __future__ import annotations

import time

import msgspec
import pytest

from gateway.model_client import RemoteError
from model_server import budget, memory
from model_server.budget import Budget
from model_server.errors import Rejection
from model_server.families import FAMILIES
from model_server.jobs.footprint import (ENCODE_PER_MPX, GIB, PLAIN_PRIOR_MARGIN, RUNTIME_BYTES, UNMEASURED_MARGIN,
                                         Footprints, _rise_prior)
from model_server.jobs.peaks import PeakTable, job_pixels, shape_of
from model_server.settings import ModelServerSettings
from protocol.errors import ErrorCode
from protocol.messages import (ControlUnit, FaceRestoration, GenerationParams, HiresFix, HostInfo, JobState,
                               LoraRef)

HOST = HostInfo(cpu="Test CPU", threads=4, isa="avx2", memory_bytes=8 * GIB)
OV = "openvino bfloat16"
TILE_ABOVE = ModelServerSettings().vae_tile_above  # the VAE works in tiles above this side


def _params(**kw) -> GenerationParams:
    return GenerationParams(prompt="a cat", seed=1, **{"width": 512, "height": 512, "steps": 4, **kw})


# --- MEMORY_BUDGET -------------------------------------------------------------------------------


def test_the_setting_takes_sizes_shares_off_and_auto_and_refuses_the_rest():
    assert budget.resolve("6GiB", cgroup=None, ram=8 * GIB) == Budget(6 * GIB, "MEMORY_BUDGET")
    assert budget.resolve("6144MB", cgroup=None, ram=8 * GIB).bytes == 6144 * 10**6
    assert budget.resolve("3221225472", cgroup=None, ram=8 * GIB).bytes == 3 * GIB
    share = budget.resolve("50%", cgroup=(GIB, 0), ram=8 * GIB)
    assert share.bytes == 4 * GIB and "50% of 8.0 GiB RAM" in share.source  # a share is of RAM, always
    assert budget.resolve("off", cgroup=(GIB, 0), ram=8 * GIB).bytes == 0
    # auto: the cgroup limit when one is set (less a margin), else a share of RAM
    auto = budget.resolve("auto", cgroup=(4 * GIB, GIB), ram=8 * GIB)
    assert auto.bytes == int(4 * GIB * budget.CGROUP_SHARE) and "cgroup memory limit, 4.00 GiB" in auto.source
    assert budget.resolve("", cgroup=None, ram=8 * GIB).bytes == int(8 * GIB * budget.RAM_SHARE)
    assert budget.resolve("auto", cgroup=(16 * GIB, 0), ram=8 * GIB).bytes == int(8 * GIB * budget.RAM_SHARE)
    for bad in ("lots", "0%", "101%", "12 parsecs", "100MB", "-1GiB"):
        with pytest.raises(ValueError, match="MEMORY_BUDGET"):
            budget.parse(bad)
    with pytest.raises(ValueError, match="MEMORY_BUDGET"):
        ModelServerSettings.from_env({"MEMORY_BUDGET": "plenty"})  # the start stops, saying the accepted forms


def _files(root, entries: dict[str, str]):
    for relative, text in entries.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_cgroup_limit_is_this_process_own_or_an_ancestor_in_v1_v2_and_a_container(tmp_path):
    proc = tmp_path / "cgroup"
    # v1 on a host: the process in a child cgroup whose parent holds the tighter limit
    proc.write_text("4:memory:/jobs/server\n3:cpu:/\n")
    _files(tmp_path / "fs", {"memory/jobs/server/memory.limit_in_bytes": str(3 * GIB),
                             "memory/jobs/server/memory.usage_in_bytes": str(GIB),
                             "memory/jobs/memory.limit_in_bytes": str(2 * GIB),
                             "memory/jobs/memory.usage_in_bytes": str(GIB // 2),
                             "memory/memory.limit_in_bytes": "9223372036854771712",
                             "memory/memory.usage_in_bytes": "1"})
    assert memory.cgroup_memory(str(proc), str(tmp_path / "fs")) == (2 * GIB, GIB // 2)
    # v2: the unified hierarchy's memory.max; "max" is no limit
    proc.write_text("0::/user.slice/app.scope\n")
    _files(tmp_path / "v2", {"user.slice/app.scope/memory.max": str(GIB), "user.slice/app.scope/memory.current": "7",
                             "user.slice/memory.max": "max", "user.slice/memory.current": "9"})
    assert memory.cgroup_memory(str(proc), str(tmp_path / "v2")) == (GIB, 7)
    # a container: its own cgroup is the mount's root, whatever path /proc names
    proc.write_text("0::/docker/0123abcd\n")
    _files(tmp_path / "box", {"memory.max": str(4 * GIB), "memory.current": str(GIB)})
    assert memory.cgroup_memory(str(proc), str(tmp_path / "box")) == (4 * GIB, GIB)
    _files(tmp_path / "free", {"memory.max": "max", "memory.current": "1"})
    assert memory.cgroup_memory(str(proc), str(tmp_path / "free")) is None
    assert memory.cgroup_memory(str(tmp_path / "absent"), str(tmp_path / "nothing")) is None


# --- measured peaks --------------------------------------------------------------------------------


def test_peaks_are_kept_per_model_kind_and_size_smoothed_upwards_and_per_host(tmp_path):
    peaks = PeakTable(tmp_path, HOST)
    shape = shape_of(_params(), OV)
    peaks.record("m", shape, 512 * 512, start_bytes=2 * GIB, peak_bytes=3 * GIB)
    peaks.record("m", shape, 512 * 512, start_bytes=2 * GIB + GIB // 2, peak_bytes=2 * GIB + GIB // 2 + GIB // 4)
    entry = peaks.entries()[0]
    # the least peak seen stays: the first started with another size's buffers held, this one did not
    assert entry.least_peak_bytes == 2 * GIB + GIB // 2 + GIB // 4 and entry.jobs == 2
    assert entry.rise_bytes == int(0.7 * GIB + 0.3 * GIB / 4)  # the rise fades towards the newest...
    peaks.record("m", shape, 512 * 512, start_bytes=0, peak_bytes=2 * GIB)
    assert peaks.entries()[0].rise_bytes == 2 * GIB  # ...but never below it
    assert peaks.nearest("m", shape, 600 * 600).pixels == 512 * 512 and peaks.nearest("other", shape, 1) is None
    assert PeakTable(tmp_path, HOST).entries() == peaks.entries()  # a restart keeps them
    assert PeakTable(tmp_path, msgspec.structs.replace(HOST, memory_bytes=16 * GIB)).entries() == []
    (tmp_path / peaks.path.name).write_text("[{")
    assert PeakTable(tmp_path, HOST).entries() == []  # unreadable: measured afresh, never fatal


def test_a_kind_of_job_is_its_mode_engine_preset_and_the_parts_that_add_memory():
    plain = shape_of(_params(), OV)
    assert plain == "txt2img|openvino bfloat16|"  # no preset named
    assert shape_of(_params(), "torch bfloat16: LoRAs run on torch") != plain
    hires = _params(hires=HiresFix(scale=2.0))
    assert "hires:" in shape_of(hires, OV) and job_pixels(hires) == 1024 * 1024  # its largest pass
    control = _params(controls=[ControlUnit(model="cn", module="canny")])
    assert "control:canny:cn" in shape_of(control, OV)
    assert "faces:" in shape_of(_params(face_restoration=FaceRestoration()), OV)
    assert "loras:1" in shape_of(_params(loras=[LoraRef(name="ink")]), OV)
    assert job_pixels(_params(mode="upscale", upscale=2.0), source_pixels=2048 * 2048) == 2048 * 2048


# --- predictions ----------------------------------------------------------------------------------


def test_a_prediction_is_the_prior_then_what_this_host_measured_scaled_by_size(tmp_path):
    peaks = PeakTable(None, HOST)
    prints = Footprints(peaks, TILE_ABOVE)
    full = FAMILIES["sd1"].resident_bytes
    prints.own["m"] = full - RUNTIME_BYTES
    prior = prints.predict("m", "sd1", _params(), OV, full)
    assert prior.basis == "prior" and prior.start_bytes == full
    # the plain kind the prior was measured on gets the smaller margin; a kind with parts priced the larger
    assert prior.rise_bytes == _rise_prior("openvino", 512 * 512, 1.0, TILE_ABOVE, PLAIN_PRIOR_MARGIN)
    composed = prints.predict("m", "sd1", _params(mode="img2img"), OV, full)
    assert composed.basis == "prior" and composed.rise_bytes == pytest.approx(
        ENCODE_PER_MPX * 512 * 512 / 1e6 * UNMEASURED_MARGIN
        + _rise_prior("openvino", 512 * 512, 1.0, TILE_ABOVE, UNMEASURED_MARGIN), abs=2)
    # on torch the weights coming back are the model's own size: the margin is on the activations alone
    once, twice = (_rise_prior("torch", 512 * 512, 1.0, TILE_ABOVE, margin) for margin in (1.0, 2.0))
    assert 2 * once - twice > GIB  # what a doubled margin did not double: SD 1.x's weights
    bigger = prints.predict("m", "sd1", _params(width=1024, height=1024), OV, full)
    assert bigger.rise_bytes > 2 * prior.rise_bytes  # activations grow with the pixels...

    def per_pixel(kind, small, large, tile_above=TILE_ABOVE):
        return (_rise_prior(kind, large, 1.0, tile_above) - _rise_prior(kind, small, 1.0, tile_above)) / (large - small)

    tile = TILE_ABOVE ** 2  # ...more slowly above the size the VAE works in tiles at (SD_VAE_TILE_ABOVE; 0: never)
    for kind in ("openvino", "torch"):
        assert per_pixel(kind, tile, 4 * tile) < 0.6 * per_pixel(kind, tile // 4, tile)
        assert per_pixel(kind, tile, 4 * tile, 0) == pytest.approx(per_pixel(kind, tile // 4, tile, 0), rel=1e-3)
    # measured: the same kind at the same size predicts the larger of start + rise and the least peak it reached
    shape = shape_of(_params(), OV)
    peaks.record("m", shape, 512 * 512, start_bytes=full, peak_bytes=full + GIB // 4)
    again = prints.predict("m", "sd1", _params(), OV, full + GIB // 8)
    assert again.basis == "measured" and again.peak_bytes == full + GIB // 8 + GIB // 4
    assert prints.predict("m", "sd1", _params(), OV, full - GIB).peak_bytes == full + GIB // 4  # the least peak
    scaled = prints.predict("m", "sd1", _params(width=1024, height=1024), OV, full)
    assert scaled.basis == "scaled" and GIB // 4 < scaled.rise_bytes < bigger.rise_bytes
    # a kind never run: the plain job's measured rise plus the priced parts
    with_control = prints.predict("m", "sd1", _params(controls=[ControlUnit(model="cn", module="canny")]), OV, full)
    assert with_control.basis == "parts" and with_control.rise_bytes > GIB  # a ControlNet on OpenVINO: ~1.15 GiB
    # the pass measured here takes no margin, only the priced parts do; the hires fix's passes added up take it
    encoded = prints.predict("m", "sd1", _params(mode="img2img"), OV, full)
    assert encoded.rise_bytes == pytest.approx(GIB // 4 + ENCODE_PER_MPX * 512 * 512 / 1e6 * UNMEASURED_MARGIN, abs=2)
    hires = prints.predict("m", "sd1", _params(width=256, height=256, hires=HiresFix(scale=2.0)), OV, full)
    assert hires.basis == "parts" and hires.rise_bytes > UNMEASURED_MARGIN * GIB // 4


def test_a_small_model_is_priced_at_its_size_and_a_model_not_loaded_at_what_it_will_take(tmp_path):
    prints = Footprints(PeakTable(None, HOST), TILE_ABOVE)
    full = FAMILIES["sd1"].resident_bytes
    small_start = RUNTIME_BYTES + (full - RUNTIME_BYTES) // 20
    small = prints.predict("tiny", "sd1", _params(), "torch float32", small_start)
    big = prints.predict("big", "sd1", _params(), "torch float32", full)
    assert small.rise_bytes * 3 < big.rise_bytes  # a tiny model is not refused for a full-size one's needs
    # where a job would start: its model in memory; else the others dropped and it loaded (what it took when
    # loaded here before, its weight files, its family's full size)
    assert prints.start_for("m", "sd1", "hub/id", "hub", True, 3 * GIB) == 3 * GIB
    prints.own["seen"] = 2 * GIB
    assert prints.start_for("seen", "sd1", "hub/id", "hub", False, 3 * GIB, others_bytes=2 * GIB) == 3 * GIB
    assert prints.start_for("seen", "sd1", "hub/id", "hub", False, 3 * GIB) == 5 * GIB  # nothing to drop
    folder = tmp_path / "model" / "unet"
    folder.mkdir(parents=True)
    (folder / "diffusion_pytorch_model.safetensors").write_bytes(b"0" * 4096)
    (folder / "config.json").write_text("{}" * 4096)
    assert prints.start_for("f", "sd1", str(tmp_path / "model"), "folder", False, GIB, GIB) == RUNTIME_BYTES + 4096
    assert prints.start_for("x", "sdxl", "stabilityai/x", "hub", False, GIB, GIB) == FAMILIES["sdxl"].resident_bytes


# --- the check at submit, through a real model server ------------------------------------------------


def test_a_job_over_the_budget_is_refused_naming_the_size_that_fits_and_one_within_runs(start_server):
    server, client = start_server()
    keeper = server.worker.budget
    keeper.idle_bytes = GIB  # a full-size server between jobs: the budget between the two stays over its 256 MiB floor
    small, big = _params(width=512, height=512), _params(width=1536, height=1536)
    low, high = keeper.predict(small).peak_bytes, keeper.predict(big).peak_bytes
    assert high > low
    keeper.setting = str((low + high) // 2)
    with pytest.raises(Rejection) as refused:
        keeper.check(big)
    error = refused.value.error
    assert error.code is ErrorCode.OVER_BUDGET and error.field == "width" and not error.retryable
    assert "(MEMORY_BUDGET)" in error.message and "lower the size to" in error.hint
    fits = error.hint.split("lower the size to ")[1].split(",")[0].rstrip(".")
    width, height = map(int, fits.split("x"))
    assert 512 <= width < 1536 and keeper.predict(_params(width=width, height=height)).peak_bytes <= keeper.budget.bytes
    # over the wire: the same refusal, and a job within the budget shows its predicted and measured peak
    with pytest.raises(RemoteError) as remote:
        client.submit(big)
    assert remote.value.error.code is ErrorCode.OVER_BUDGET and remote.value.error.hint == error.hint
    job = client.submit(_params(width=width, height=height))
    assert job.memory.predicted_peak_bytes <= keeper.budget.bytes and job.memory.basis
    deadline = time.monotonic() + 10
    while job.state is not JobState.SUCCEEDED and time.monotonic() < deadline:
        time.sleep(0.02)
        job = client.get_job(job.job_id)
    assert job.memory.peak_rss_bytes > 0
    pong = client.ping()
    assert pong.memory_budget.budget_bytes == (low + high) // 2 and pong.memory_budget.source == "MEMORY_BUDGET"
    assert pong.memory_budget.idle_bytes > 0


def test_a_model_too_big_for_the_budget_is_refused_saying_so(start_server):
    server, client = start_server()
    keeper = server.worker.budget
    keeper.idle_bytes = 4 * GIB  # as if the loaded model held 4 GiB between jobs
    keeper.setting = "2GiB"
    with pytest.raises(Rejection) as refused:
        keeper.check(_params())
    assert refused.value.error.field == "model" and "MEMORY_BUDGET" in refused.value.error.hint


def test_the_budget_keeps_a_model_in_memory_only_while_the_next_one_and_its_job_fit_beside_it(tmp_path, monkeypatch):
    from model_server import memory
    from model_server.jobs.memory_budget import MemoryBudget
    from model_server.loading.progress import LoadProgress
    from tests.model_server.test_models_catalog import make_set

    # The test process's own RSS (whatever earlier tests left in it) is not this server's: a fixed reading.
    monkeypatch.setattr(memory, "rss_bytes", lambda: int(0.6 * GIB))
    models, loads = make_set(tmp_path)
    models.max_resident = 3
    keeper = MemoryBudget("off", models, PeakTable(None, HOST), TILE_ABOVE)
    models.load_default(LoadProgress())
    assert "tiny" in keeper.footprints.own  # the load told the budget what it added
    models.prepare(_params(model="other"), lambda text: None)
    assert models.resident_names() == ["tiny", "other"]  # no budget: MAX_RESIDENT_MODELS alone bounds them
    assert set(keeper.status().resident) == {"tiny", "other"}
    keeper.setting = "64GiB"
    keeper.footprints.own["tiny-turbo"] = 62 * GIB  # as if it took 62 GiB: with the others kept it would not fit
    assert not keeper._keep(models.catalog.find("tiny-turbo"), _params(), ["tiny", "other"])
    models.prepare(_params(model="tiny-turbo", preset="turbo"), lambda text: None)
    assert models.resident_names() == ["tiny-turbo"] and loads == ["tiny", "other", "tiny-turbo"]
    # a job for a model not in memory is priced as if the others made room for it
    keeper.footprints.own["tiny"] = 40 * GIB
    assert keeper.predict(_params(model="tiny")).start_bytes < 41 * GIB
