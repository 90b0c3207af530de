"""LCM-distilled models (LCM_Dreamshaper_v7's layout: a UNet that embeds the guidance scale, ``timestep_cond``,
and runs no unconditional half), on a tiny random-weight one: torch, the UNet converted to OpenVINO and the model
exported as OpenVINO IR (as FastSD CPU's and the OpenVINO organisation's LCM models are published) give the same
images, and the guidance scale changes them on every engine."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("openvino")

from model_server.engine.diffusers_pipeline import DiffusersPipeline  # noqa: E402
from model_server.engine.tiny_model import write_tiny_lcm_model  # noqa: E402
from model_server.settings import ModelServerSettings  # noqa: E402
from protocol.messages import GenerationParams  # noqa: E402

pytestmark = pytest.mark.slow
COMMON = {"dtype": "float32", "lcm_lora": "none", "tiny_vae": "none", "default_size": 64}


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    """torch, OpenVINO (its UNet converted here) and the model exported as OpenVINO IR, float32."""
    from model_server.engine.openvino_ir_export import export

    folder = write_tiny_lcm_model(tmp_path_factory.mktemp("lcm") / "tiny-lcm-dreamshaper")
    ir = export(folder, tmp_path_factory.mktemp("ir") / "tiny-lcm-fp16-ov")
    cache = str(tmp_path_factory.mktemp("cache"))
    return {name: DiffusersPipeline.load(ModelServerSettings(model=str(model), backend=backend, cache_dir=cache,
                                                             **COMMON))
            for name, model, backend in (("torch", folder, "torch"), ("openvino", folder, "openvino"),
                                         ("ir", ir, "auto"))}


def image(pipe, **kw) -> np.ndarray:
    p = GenerationParams(**({"prompt": "a cat", "seed": 5, "steps": 4, "width": 64, "height": 64,
                             "guidance_scale": 8.0} | kw))
    return np.asarray(pipe.generate(p, p.seed, lambda *a, **k: None, lambda: None), dtype=np.float32)


def test_every_engine_gives_the_torch_image_and_feeds_it_the_guidance(engines):
    assert engines["openvino"].optimizations()["backend"] == "openvino"
    assert "timestep_cond" in engines["openvino"].ov_pipe.unet.ir.inputs
    assert "timestep_cond" in engines["ir"].pipe.unet.ir.inputs
    for guidance in (8.0, 2.0):
        reference = image(engines["torch"], guidance_scale=guidance)
        for name in ("openvino", "ir"):
            assert np.abs(image(engines[name], guidance_scale=guidance) - reference).mean() < 1.0, (name, guidance)
    for name in engines:  # the embedding is an input, not a constant traced in: another scale, another image
        assert np.abs(image(engines[name], guidance_scale=8.0) - image(engines[name], guidance_scale=2.0)).mean() > 1
    # No unconditional half: compiled at load for one latent, as the jobs run it.
    assert engines["openvino"].optimizations()["openvino_compiled_for"] == "64x64, batch 1"
