"""Inpainting with a dedicated checkpoint (SD_INPAINT_MODEL), on tiny random-weight models."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from PIL import Image  # noqa: E402

from model_server.engine.diffusers_pipeline import DiffusersPipeline  # noqa: E402
from model_server.settings import ModelServerSettings  # noqa: E402
from protocol.messages import GenerationParams  # noqa: E402

pytestmark = pytest.mark.slow


def inpaint(pipe, **kw):
    p = GenerationParams(**({"prompt": "a cat", "seed": 3, "steps": 8, "width": 64, "height": 64,
                             "mode": "inpaint", "strength": 0.75} | kw))
    init = Image.new("RGB", (64, 64), (220, 30, 30))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))  # repaint the left half
    steps = []
    image = pipe.generate(p, p.seed, lambda step, seconds, preview=None: steps.append(step), lambda: None,
                          init_image=init, mask=mask)
    return np.asarray(image), steps


def load(tiny_model_dir, tmp_path, **kw):
    return DiffusersPipeline.load(ModelServerSettings(model=str(tiny_model_dir), cache_dir=str(tmp_path),
                                                      lcm_lora="tiny", tiny_vae="tiny", **kw))


@pytest.fixture(scope="module")
def checkpoint(tiny_model_dir, tmp_path_factory):
    return load(tiny_model_dir, tmp_path_factory.mktemp("cache"), dtype="float32", inpaint_model="tiny")


def test_without_a_checkpoint_the_model_itself_inpaints(tiny_model_dir, tmp_path):
    pipe = load(tiny_model_dir, tmp_path, dtype="float32")
    assert pipe.optimizations()["inpaint_model"].startswith("none: the model itself blends")
    image, steps = inpaint(pipe)
    assert max(steps) == 6 and (image[:, 40:] == (220, 30, 30)).all()  # the kept half is the original's


def test_the_checkpoint_loads_on_the_first_inpaint_job_and_conditions_on_the_mask(checkpoint, tiny_model_dir,
                                                                                   tmp_path):
    assert checkpoint.optimizations()["inpaint_model"].endswith("(loads on the first inpaint job)")
    image, steps = inpaint(checkpoint)
    opts = checkpoint.optimizations()
    assert opts["inpaint_model"].endswith("tiny-inpaint") and opts["inpaint_model_load_seconds"] >= 0
    assert checkpoint._inpaint_unet.config.in_channels == 9
    assert checkpoint.pipe.unet.config.in_channels == 4  # the model's own UNet serves txt2img and img2img
    assert max(steps) == 6 and (image[:, 40:] == (220, 30, 30)).all()
    blended, _ = inpaint(load(tiny_model_dir, tmp_path, dtype="float32"))
    assert not np.array_equal(image[:, :24], blended[:, :24])  # another UNet repainted the left half
    again, _ = inpaint(checkpoint)
    assert np.array_equal(image, again)  # loaded once, deterministic per seed


def test_step_caching_works_on_the_checkpoint_and_lcm_presets_keep_the_models_unet(checkpoint):
    image, steps = inpaint(checkpoint, preset="balanced", deep_cache=3, steps=9, scheduler="dpmpp_2m_karras")
    assert max(steps) == 6 and image.shape == (64, 64, 3)
    fast, steps = inpaint(checkpoint, preset="fast", steps=4, scheduler="lcm", guidance_scale=1.0, strength=1.0)
    # The LCM adapter is attached to the model's UNet: the fast preset inpaints with it, blending.
    assert max(steps) == 4 and (fast[:, 40:] == (220, 30, 30)).all()


def test_a_checkpoint_that_is_not_an_inpainting_one_leaves_inpainting_on_the_model(tiny_model_dir, tmp_path):
    pipe = load(tiny_model_dir, tmp_path, dtype="float32", inpaint_model=str(tiny_model_dir))
    image, steps = inpaint(pipe)
    reason = pipe.optimizations()["inpaint_model"]
    assert reason.startswith("none: ") and "4 input channels, not 9" in reason
    assert max(steps) == 6 and (image[:, 40:] == (220, 30, 30)).all()


def test_a_missing_checkpoint_is_reported_at_start(tiny_model_dir, tmp_path):
    pipe = load(tiny_model_dir, tmp_path, dtype="float32", inpaint_model=str(tmp_path / "nowhere"))
    assert "does not exist" in pipe.optimizations()["inpaint_model"]
    assert max(inpaint(pipe)[1]) == 6


def test_in_bf16_the_checkpoints_unet_alone_is_converted_once(tiny_model_dir, tmp_path):
    pipe = load(tiny_model_dir, tmp_path, dtype="bfloat16", inpaint_model="tiny", backend="torch")
    inpaint(pipe)
    copies = [p for p in (tmp_path / "bf16").iterdir() if p.name.startswith("tiny-inpaint")]
    assert len(copies) == 1 and sorted(p.name for p in copies[0].iterdir()) == ["sd_cpu_converted.json", "unet"]
    assert pipe._inpaint_unet.dtype == torch.bfloat16
    assert pipe.optimizations()["inpaint_model_weights"] == "bf16 copy (made now)"
