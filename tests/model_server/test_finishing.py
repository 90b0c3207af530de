"""Finishing without torch: the tile grid, the upscaler list and its checks, the hires fix's sizes, steps,
second pass and run (over the fake pipeline), and what the infotext says of both."""

from __future__ import annotations

import pytest
from PIL import Image

from model_server.errors import Rejection
from model_server.fake_pipeline import FakePipeline, FakeUpscaleModels
from model_server.finishing.hires import generate_hires, second_pass
from model_server.finishing.tiles import spans, tile_grid
from model_server.finishing.upscalers import Upscalers, cover, scale_from_name
from protocol.contract import Limits, hires_violation, upscale_size
from protocol.infotext import infotext
from protocol.messages import GenerationParams, HiresFix, hires_size, steps_run


@pytest.mark.parametrize("length, tile, overlap", [(100, 64, 16), (512, 256, 16), (1000, 64, 16), (64, 64, 16),
                                                   (30, 64, 16), (257, 256, 16)])
def test_tiles_cover_the_image_in_as_few_as_fit_and_overlap(length, tile, overlap):
    found = spans(length, tile, overlap)
    assert found[0][0] == 0 and found[-1][1] == length
    assert len(found) == -(-length // tile) and all(b - a <= tile + 2 * overlap for a, b in found)
    assert all(prev_end - start >= 2 * overlap for (_, prev_end), (start, _) in zip(found, found[1:]))


def test_the_grid_is_rows_of_columns():
    grid = tile_grid(160, 96, 64, 16)
    assert len(grid) == 3 * 2 and grid[0] == (0, 0, 69, 64) and grid[-1] == (91, 32, 160, 96)
    assert spans(512, 256, 16) == [(0, 272), (240, 512)]  # the work is the image plus its seams


@pytest.mark.parametrize("name, scale", [("4x-UltraSharp", 4), ("RealESRGAN_x2plus", 2), ("realesr-general-x4v3", 4),
                                         ("4x_NMKD-Siax_200k", 4), ("SwinIR_4x", 4), ("my-model", 0),
                                         ("1x-deblur", 1), ("x264-artifacts", 0)])
def test_a_models_scale_is_read_from_its_name_until_it_is_loaded(name, scale):
    assert scale_from_name(name) == scale


@pytest.fixture
def upscalers(tmp_path):
    for name in ("4x-a.pth", "b-x2.safetensors", "c.pt", "d.ckpt", ".hidden.pth", "Lanczos.pth"):
        (tmp_path / name).write_bytes(b"12345678")
    return Upscalers(str(tmp_path), lambda: FakeUpscaleModels(64, 16))


def test_the_list_is_builtins_latent_ones_and_model_files_but_never_code_files(upscalers):
    entries = {e.name: e for e in upscalers.entries()}
    assert [n for n, e in entries.items() if e.kind == "builtin"] == ["None", "Lanczos", "Nearest"]
    assert entries["Latent"].kind == "latent"
    models = {n: (e.scale, e.file) for n, e in entries.items() if e.kind == "model"}
    assert models == {"4x-a": (4.0, "4x-a.pth"), "b-x2": (2.0, "b-x2.safetensors")}  # no .pt/.ckpt, hidden, shadow


def test_an_unknown_or_latent_upscaler_is_refused_naming_the_right_ones(upscalers):
    with pytest.raises(Rejection, match="unknown upscaler") as unknown:
        upscalers.check("R-ESRGAN 4x+", latent=False)
    assert "4x-a" in unknown.value.error.hint and "Latent" not in unknown.value.error.hint
    with pytest.raises(Rejection, match="hires fix"):
        upscalers.check("Latent", latent=False)
    upscalers.check("Latent (nearest)", latent=True)
    upscalers.check("b-x2", latent=False)


def test_a_model_runs_once_and_lanczos_reaches_the_size_asked(upscalers):
    image = Image.new("RGB", (40, 30), "red")
    done = []
    out = upscalers.upscale("4x-a", image, 100, 60, lambda *a: done.append(a), lambda: None)
    assert out.size == (100, 60) and len(done) == upscalers.tiles("4x-a", 40, 30) == 1


@pytest.mark.parametrize("size, target", [((100, 50), (60, 60)), ((50, 100), (200, 100)), ((64, 64), (64, 64))])
def test_cover_keeps_the_aspect_and_crops_the_centre(size, target):
    assert cover(Image.new("RGB", size), *target, "LANCZOS").size == target


def test_an_upscale_jobs_size_is_by_factor_or_as_given():
    by = GenerationParams(prompt="u", seed=0, mode="upscale", upscale=2.5)
    to = GenerationParams(prompt="u", seed=0, mode="upscale", upscale_width=300, upscale_height=200)
    assert upscale_size(100, 40, by) == (250, 100) and upscale_size(100, 40, to) == (300, 200)
    assert steps_run(by) == 0
    assert infotext(by, 0, "x") == "Postprocess upscale by: 2.5, Postprocess upscaler: Lanczos"


def hires(**fields) -> GenerationParams:
    return GenerationParams(prompt="a cat", seed=1, steps=20, width=512, height=384, hires=HiresFix(**fields))


def test_the_hires_size_is_by_scale_or_given_keeping_the_aspect_for_one_side():
    assert hires_size(hires(scale=1.5)) == (768, 576)
    assert hires_size(hires(width=1024, height=640)) == (1024, 640)
    assert hires_size(hires(width=1024)) == (1024, 768)


def test_the_hires_fix_adds_its_second_pass_steps_and_runs_at_least_one():
    assert steps_run(hires(steps=10, strength=0.5)) == 20 + 5
    assert steps_run(hires(strength=0.5)) == 20 + 10  # its steps default to the job's
    assert steps_run(hires(steps=3, strength=0.1)) == 20 + 1
    second = second_pass(hires(steps=3, strength=0.1, prompt="a cat, detailed"))
    assert (second.mode, second.width, second.height, second.hires) == ("img2img", 1024, 768, None)
    assert steps_run(second) == 1 and second.prompt == "a cat, detailed" and second.negative_prompt == ""


@pytest.mark.parametrize("strength", [0.01, 0.05, 0.1, 0.5, 1.0])
def test_the_second_pass_runs_the_steps_counted_for_it_whatever_its_steps(strength):
    for steps in range(1, 151):  # 49 x (1/49) is 0.999... in floating point: it must still run one step
        params = hires(steps=steps, strength=strength)
        second = second_pass(params)
        assert steps_run(second) == steps_run(params) - params.steps and 0 < second.strength <= 1, steps


def test_a_hires_fix_past_the_limits_or_on_an_image_job_is_refused():
    limits = Limits()
    assert hires_violation(hires(scale=2), limits) is None
    assert "outside" in hires_violation(hires(scale=4), limits)[1]  # 2048 > 1536
    img2img = GenerationParams(prompt="a", seed=1, mode="img2img", hires=HiresFix())
    assert "text-to-image" in hires_violation(img2img, limits)[1]


def test_the_infotext_records_the_hires_fix_as_a1111_does():
    text = infotext(hires(scale=2, steps=10, upscaler="4x-a", prompt="sharp"), 1, "m")
    assert "Denoising strength: 0.5, Hires upscale: 2, Hires steps: 10, Hires upscaler: 4x-a" in text
    assert 'Hires prompt: "sharp"' in text


@pytest.mark.parametrize("upscaler", ["Latent", "Lanczos", "4x-a"])
def test_the_hires_fix_runs_both_passes_as_one_counted_job(upscalers, upscaler):
    params = hires(steps=4, strength=0.5, upscaler=upscaler)
    steps, said = [], []
    image = generate_hires(FakePipeline(), upscalers, params, 1, lambda step, seconds, preview=None: steps.append(step),
                           lambda: None, said.append)
    assert image.size == (1024, 768)
    assert steps == list(range(1, 20 + 2 + 1)) == list(range(1, steps_run(params) + 1))
    assert said[-1] == "hires fix: second pass at 1024x768"
