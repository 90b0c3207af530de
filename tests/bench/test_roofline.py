"""bench.roofline: FLOPs counted from the model's configs, and the floors derived from them."""

from __future__ import annotations

import json

import pytest

from bench import roofline


def test_flops_are_counted_from_the_configs_and_guidance_doubles_the_unet(tiny_model_dir):
    flops = roofline.count_flops(tiny_model_dir, size=64)
    assert set(flops) == {"unet_batch1", "unet_batch2", "vae_decode", "taesd_decode"}
    assert all(v > 0 for v in flops.values())
    assert flops["unet_batch2"] == pytest.approx(2 * flops["unet_batch1"], rel=0.01)
    # Four times the pixels is at least four times the convolution work.
    assert roofline.count_flops(tiny_model_dir, size=128)["vae_decode"] >= 4 * flops["vae_decode"] * 0.99


def test_floors_are_the_counted_work_over_the_rate():
    flops = {"unet_batch1": 100.0, "unet_batch2": 200.0, "vae_decode": 50.0, "taesd_decode": 10.0}
    floor = roofline.floors(flops, rate=100.0)
    assert floor["s_per_step_guided"] == 2.0 and floor["s_per_step_unguided"] == 1.0
    assert floor["quality_25_steps_s_per_image"] == 26 * 2.0 + 0.5  # PNDM calls the UNet 26 times for 25 steps
    assert floor["fast_4_steps_s_per_image"] == 4 * 1.0 + 0.1


def test_runs_are_set_against_the_floor_of_their_dtype_and_guidance(tmp_path):
    runs = [{"config": "seed", "preset": "quality", "dtype": "float32", "s_per_step": 8.0},
            {"config": "ours-quality", "preset": "quality", "dtype": "bfloat16", "s_per_step": 4.0},
            {"config": "ours-fast", "preset": "fast", "dtype": "bfloat16", "s_per_step": 2.0},
            {"config": "ours-balanced", "preset": "balanced", "dtype": "bfloat16", "s_per_step": 1.0},
            {"config": "ours-quality-tome0.5", "preset": "quality", "dtype": "bfloat16", "s_per_step": 1.5,
             "token_merging": 0.5}]
    results = tmp_path / "r.json"
    results.write_text(json.dumps({"runs": runs}))
    floor = {"float32": {"s_per_step_guided": 4.0, "s_per_step_unguided": 2.0},
             "bfloat16": {"s_per_step_guided": 2.0, "s_per_step_unguided": 1.0}}
    rows = {r["config"]: r for r in roofline.compare(floor, results)}
    assert rows["seed"]["share_of_floor"] == "50%"
    assert rows["ours-quality"]["share_of_floor"] == "50%"
    assert rows["ours-fast"]["floor_s_per_step"] == 1.0  # guidance 1: one UNet pass per step
    assert rows["ours-balanced"]["share_of_floor"].startswith("n/a")  # step caching does less work
    assert rows["ours-quality-tome0.5"]["share_of_floor"].startswith("n/a")  # so does token merging


def test_int8_runs_are_held_to_the_int8_floor(tmp_path):
    runs = [{"config": "ours-quality+int8-hybrid", "preset": "quality", "dtype": "bfloat16", "s_per_step": 2.0,
             "optimizations": {"backend": "openvino", "openvino_int8": "hybrid"}}]
    results = tmp_path / "r.json"
    results.write_text(json.dumps({"runs": runs}))
    floor = {"bfloat16": {"s_per_step_guided": 2.0}, "int8": {"s_per_step_guided": 1.0}}
    (row,) = roofline.compare(floor, results)
    assert row["dtype"] == "int8" and row["share_of_floor"] == "50%"


def test_the_int8_rate_is_measured_on_the_integer_path():
    rate = roofline.best_int8_rate(threads=1, repeats=1)
    assert rate["torch_int_mm_gops"] > 0 and rate["best_gflops"] == max(
        v for k, v in rate.items() if k.endswith("_gops"))
