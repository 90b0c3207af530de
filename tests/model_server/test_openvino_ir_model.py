"""Models published as OpenVINO IR only (optimum-intel's layout, as the OpenVINO organisation's ``*-int8-ov`` and
``*-fp16-ov`` repositories), on the tiny models written in that layout by the project's exporter: loaded with no
torch weights and no conversion, the torch pipeline's images within rounding (SD 1.x and SDXL, text-to-image and
image-to-image), int8 as published, and what only torch weights can run refused with the field to change."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from model_server.engine.plan import EngineFacts, decide, needs_torch
from model_server.families.detect import openvino_only, unet_multiple
from model_server.models.catalog import make_source
from protocol.messages import ControlUnit, GenerationParams, LoraRef

IR_ONLY = EngineFacts(family="sd1", openvino=True, torch_unet=False, openvino_multiple=64)


def params(**kw) -> GenerationParams:
    return GenerationParams(**({"prompt": "a cat", "seed": 3, "steps": 4, "width": 64, "height": 64} | kw))


@pytest.mark.parametrize("asked, field", [
    ({"loras": [LoraRef(name="ink", weight=0.8)]}, "loras"), ({"deep_cache": 3}, "deep_cache"),
    ({"token_merging": 0.5}, "token_merging"), ({"tiling": True}, "tiling"),
    ({"preset": "fast", "scheduler": "lcm", "steps": 4, "guidance_scale": 1.0}, "preset"),
    ({"controls": [ControlUnit(module="canny", model="canny")]}, "controls"),
    ({"width": 96}, "width")])
def test_what_only_torch_weights_run_is_refused_naming_the_field(asked, field):
    refused = needs_torch(params(**asked, **({} if "width" in asked else {"width": 512, "height": 512})), IR_ONLY)
    assert refused is not None and refused.field == field
    assert "torch weights" in str(refused) and "OpenVINO IR only" in str(refused)
    assert ("multiples of 64" in refused.hint) == (field == "width")


def test_what_openvino_runs_is_planned_on_it():
    for ok in (params(width=512, height=768), params(preset="balanced", deep_cache=3, scheduler="dpmpp_2m_karras"),
               params(mode="img2img", strength=0.5), params(mode="inpaint", strength=0.9)):
        assert needs_torch(ok, IR_ONLY) is None
        assert decide(ok, IR_ONLY).unet == "openvino"
    hybrid = decide(params(), EngineFacts(openvino=True, torch_unet=False, int8="hybrid"))
    assert hybrid.engine == "openvino int8 (hybrid)"


def _layout(folder, torch_weights: bool, blocks: int = 4):
    (folder / "unet").mkdir(parents=True)
    (folder / "unet" / "openvino_model.xml").write_text("<net/>")
    (folder / "unet" / "config.json").write_text(json.dumps({"down_block_types": ["CrossAttnDownBlock2D"] * blocks,
                                                             "cross_attention_dim": 768}))
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    if torch_weights:
        (folder / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"\0" * 8)
    return folder


def test_the_catalog_knows_an_ir_only_folder_without_loading_it(tmp_path):
    ir = make_source(str(_layout(tmp_path / "sd15-int8-ov", torch_weights=False, blocks=2)))
    both = make_source(str(_layout(tmp_path / "converted-beside", torch_weights=True)))
    assert ir.openvino_only and ir.ir_multiple == 16 and ir.family == "sd1"
    assert not both.openvino_only and not openvino_only(None) and unet_multiple(None) == 64


COMMON = {"dtype": "float32", "lcm_lora": "none", "tiny_vae": "none", "default_size": 64}


@pytest.fixture(scope="module")
def float_ir(tiny_model_dir, tmp_path_factory):
    """The tiny model exported in the published layout without int8."""
    from model_server.engine.openvino_ir_export import export

    return export(tiny_model_dir, tmp_path_factory.mktemp("ir") / "tiny-fp16-ov")


@pytest.fixture(scope="module")
def engines(tiny_model_dir, float_ir, tmp_path_factory):
    """(the float IR export of the tiny model, the same model on torch), float32."""
    from model_server.engine.diffusers_pipeline import DiffusersPipeline
    from model_server.settings import ModelServerSettings

    cache = str(tmp_path_factory.mktemp("cache"))
    return (DiffusersPipeline.load(ModelServerSettings(model=str(float_ir), cache_dir=cache, **COMMON)),
            DiffusersPipeline.load(ModelServerSettings(model=str(tiny_model_dir), backend="torch", cache_dir=cache,
                                                       **COMMON)))


def image(pipe, init=None, **kw):
    p = params(**kw)
    steps = []
    out = pipe.generate(p, p.seed, lambda step, seconds, preview=None: steps.append(preview), lambda: None,
                        init_image=init, mask=Image.new("L", (64, 64), 255) if p.mode == "inpaint" else None)
    return np.asarray(out, dtype=np.float32), steps


@pytest.mark.parametrize("kw", [{}, {"scheduler": "euler_a"}, {"scheduler": "dpmpp_2m_karras", "n": 2},
                                {"prompt": "a red cat, " * 30}, {"width": 128, "height": 64}])
def test_the_ir_model_gives_the_torch_image_within_rounding(engines, kw):
    ir, pt = engines
    a, previews = image(ir, **kw, preview=True)
    b, _ = image(pt, **kw)
    assert a.shape == b.shape and np.abs(a - b).mean() < 1.0  # of 255: float16 weights in the IRs
    assert len(previews) >= 4 and all(p is not None for p in previews)  # (PNDM calls back steps + 1 times)


@pytest.mark.parametrize("mode", ["img2img", "inpaint"])
def test_the_vae_encoder_ir_encodes_for_image_to_image_and_inpainting(engines, mode):
    ir, pt = engines
    init = Image.effect_noise((64, 64), 60).convert("RGB")
    a, _ = image(ir, mode=mode, strength=0.6, init=init)
    b, _ = image(pt, mode=mode, strength=0.6, init=init)
    assert np.abs(a - b).mean() < 1.0


def test_a_large_image_decodes_in_blended_tiles_of_one_compiled_shape(float_ir, tmp_path):
    from model_server.engine.diffusers_pipeline import DiffusersPipeline
    from model_server.settings import ModelServerSettings

    whole, tiled = (DiffusersPipeline.load(ModelServerSettings(model=str(float_ir), cache_dir=str(tmp_path), **COMMON,
                                                               vae_tile_above=above)) for above in (0, 256))
    kw = {"width": 1024, "height": 768, "steps": 2}
    assert tiled.plan(params(**kw)).decoder == "tiled" and whole.plan(params(**kw)).decoder == "full"
    a, _ = image(whole, **kw)
    b, _ = image(tiled, **kw)
    assert tiled.optimizations()["openvino_vae_compiled_for"] == "512x512"  # every tile the one compiled shape
    assert a.shape == b.shape == (768, 1024, 3)
    assert np.abs(a - b).mean() < 2.0  # of 255: the overlaps blended, no seams
    small, _ = image(tiled)  # under the tiling size: decoded whole
    assert small.shape == (64, 64, 3) and tiled.optimizations()["openvino_vae_compiled_for"] == "64x64"


def test_it_loads_with_no_torch_weights_and_says_so(engines):
    ir, _ = engines
    opts = ir.optimizations()
    assert opts["weights"] == "OpenVINO IR (no torch weights)" and opts["backend"] == "openvino"
    assert opts["openvino_vae"] == "decode and encode" and opts["weights_mb"] > 0
    assert "openvino_int8" not in opts and ir.engine(params()) == "openvino float32"
    assert sum(p.numel() for p in ir.pipe.unet.parameters()) == 0  # the configs' modules hold no weights
    assert set(ir.unavailable_presets()) == {"fast"}
    with pytest.raises(Exception) as refused:
        image(ir, loras=[LoraRef(name="ink", weight=1.0)])
    assert refused.value.error.field == "loras" and "OpenVINO IR only" in refused.value.error.message


@pytest.mark.parametrize("mode", ["hybrid", "weights"])
def test_the_published_int8_layouts_run_int8(tiny_model_dir, tiny_ir_model_dir, tmp_path, mode):
    from model_server.engine.diffusers_pipeline import DiffusersPipeline
    from model_server.engine.openvino_ir_export import export
    from model_server.settings import ModelServerSettings

    folder = tiny_ir_model_dir if mode == "hybrid" else export(tiny_model_dir, tmp_path / "tiny-int8w-ov", mode)
    pipe = DiffusersPipeline.load(ModelServerSettings(model=str(folder), cache_dir=str(tmp_path),
                                                      lcm_lora="none", tiny_vae="none", default_size=64))
    assert pipe.optimizations()["openvino_int8"] == mode
    assert pipe.engine(params()).startswith("openvino ") and pipe.engine(params()).endswith(f"int8 ({mode})")
    out, _ = image(pipe, n=2, width=64, height=128)
    assert out.shape == (128, 64, 3) and out.std() > 1


def test_sdxl_in_the_ir_layout_gives_the_torch_image(tmp_path):
    from model_server.engine.diffusers_pipeline import DiffusersPipeline
    from model_server.engine.openvino_ir_export import export
    from model_server.engine.tiny_model import write_tiny
    from model_server.settings import ModelServerSettings

    common = {"cache_dir": str(tmp_path), "dtype": "float32", "lcm_lora": "none", "tiny_vae": "none",
              "default_size": 64}
    folder = export(write_tiny("tiny-sdxl", tmp_path), tmp_path / "tiny-sdxl-fp16-ov")
    ir = DiffusersPipeline.load(ModelServerSettings(model=str(folder), **common))
    pt = DiffusersPipeline.load(ModelServerSettings(model=str(tmp_path / "tiny-sdxl"), backend="torch", **common))
    assert ir.optimizations()["family"] == "sdxl"
    for kw in ({}, {"negative_prompt": "blurry", "prompt": "a cat BREAK on a mat"}):
        a, _ = image(ir, **kw)
        b, _ = image(pt, **kw)
        assert np.abs(a - b).mean() < 1.0
