"""Control without torch: the built-in preprocessors' maps, the ControlNet folder's listing and the checks
every unit meets at submit, the plan's decisions for jobs with units, the infotext, and the model server
(fake pipeline) taking units and their images over ZeroMQ. The engine and the real service:
tests/integration/test_control_service.py."""

from __future__ import annotations

import dataclasses
import io
import json

import numpy as np
import pytest
from PIL import Image, ImageDraw

from model_server.control.catalog import ControlNets
from model_server.control.preprocessors import control_maps, detect
from model_server.engine.plan import EngineFacts, decide
from model_server.families.detect import from_config
from model_server.errors import Rejection
from protocol.control import BUILTIN_MODULES, module_named, threshold
from protocol.errors import ErrorCode
from protocol.infotext import infotext
from protocol.messages import ControlUnit, GenerationParams, JobState, LoraRef
from tests.helpers import wait_until


def drawing(size=(80, 64)) -> Image.Image:
    image = Image.new("RGB", size, "white")
    ImageDraw.Draw(image).ellipse((10, 10, size[0] - 10, size[1] - 10), outline="black", width=3)
    return image


def params(**kw) -> GenerationParams:
    return GenerationParams(**{"prompt": "a cat", "seed": 1, "width": 64, "height": 64, **kw})


@pytest.mark.parametrize("module", list(BUILTIN_MODULES))
def test_every_builtin_preprocessor_makes_an_rgb_map_at_its_resolution(module):
    made = detect(module, drawing(), 128)
    assert made.mode == "RGB"
    if BUILTIN_MODULES[module].resolution and module != "tile_resample":
        assert min(made.size) == 128 and made.size == (160, 128)  # the shorter side at the resolution
    elif not BUILTIN_MODULES[module].resolution:
        assert made.size == (80, 64)


def test_the_maps_are_what_each_module_says():
    source = drawing()
    edges = np.asarray(detect("canny", source, 64))
    assert set(np.unique(edges)) == {0, 255} and (edges == 255).mean() > 0.02
    assert np.array_equal(np.asarray(detect("invert", source, 64)), 255 - np.asarray(source))
    binary = np.asarray(detect("binary", source, 64))
    assert set(np.unique(binary)) <= {0, 255} and (binary == 255).mean() < 0.5  # white lines on black
    assert detect("tile_resample", source, 64, a=4).size == (20, 16)
    assert np.array_equal(np.asarray(detect("shuffle", source, 64, seed=3)),
                          np.asarray(detect("shuffle", source, 64, seed=3)))
    loose, tight = (np.asarray(detect("canny", source, 64, a=a, b=b)) for a, b in ((10, 20), (200, 250)))
    assert (loose == 255).sum() >= (tight == 255).sum()


def test_thresholds_default_when_unset_and_stay_within_the_modules_sliders():
    assert threshold("canny", "a", -1) == 100 and threshold("canny", "b", -1) == 200
    assert threshold("canny", "a", 999) == 255 and threshold("tile_resample", "a", 0.5) == 1.0
    assert module_named("Invert (from white bg & black line)") == "invert" and module_named("openpose_full") is None
    assert module_named("hed") == "softedge_hed" and module_named("depth_midas") == "depth_midas"


def test_each_units_map_is_at_the_jobs_size_and_the_inpaint_module_carries_the_mask():
    p = params(width=96, height=64, controls=[ControlUnit(module="canny", model="m"),
                                              ControlUnit(module="inpaint_only", model="m", resize_mode="stretch")])
    init, mask = Image.new("RGB", (96, 64), "red"), Image.new("L", (96, 64), 255)
    maps = control_maps(p, [drawing((40, 40)), None], init, mask, 1)
    assert [m.image.size for m in maps] == [(96, 64), (96, 64)]
    assert maps[0].mask is None and maps[1].mask is mask and maps[1].image.getpixel((0, 0)) == (255, 0, 0)


def write_controlnet(folder, name: str, config: dict, weights: bool = True) -> None:
    path = folder / name
    path.mkdir()
    (path / "config.json").write_text(json.dumps(config))
    if weights:
        (path / "diffusion_pytorch_model.safetensors").write_bytes(b"\0" * 16)


def write_header(path, tensors: dict[str, list[int]]) -> None:
    """A safetensors file whose header names ``tensors`` (name -> shape); the listing reads headers only."""
    header = json.dumps({name: {"dtype": "F16", "shape": shape, "data_offsets": [0, 0]}
                         for name, shape in tensors.items()}).encode()
    path.write_bytes(len(header).to_bytes(8, "little") + header)


def test_single_file_controlnets_are_told_by_their_tensors_in_either_layout(tmp_path):
    write_header(tmp_path / "control_v11p_sd15_canny.safetensors", {
        "control_model.input_hint_block.0.weight": [16, 3, 3, 3],
        "control_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": [320, 768]})
    write_header(tmp_path / "control_v11p_sd21_depth.safetensors", {
        "input_hint_block.0.weight": [16, 3, 3, 3],
        "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": [320, 1024]})
    write_header(tmp_path / "xl-canny.safetensors", {"controlnet_cond_embedding.conv_in.weight": [16, 3, 3, 3],
                                                     "add_embedding.linear_1.weight": [1280, 2816]})
    write_header(tmp_path / "a-lora.safetensors", {"lora_unet_down_blocks_0.alpha": []})
    listed = {e.name: (e.kind, e.family) for e in ControlNets(str(tmp_path)).entries(set())}
    assert listed == {"control_v11p_sd15_canny": ("controlnet", "sd1"),
                      "control_v11p_sd21_depth": ("controlnet", "sd2"), "xl-canny": ("controlnet", "sdxl")}


def test_ip_adapters_are_listed_with_the_image_encoder_whose_width_they_take(tmp_path):
    from model_server.engine.tiny_controlnets import write_tiny_ip_adapter

    path = write_tiny_ip_adapter(tmp_path)
    nets = ControlNets(str(tmp_path))
    found = nets.find("ip-adapter_tiny")
    assert (found.kind, found.family, found.encoder) == ("ip-adapter", "sd1", path.parent / "image_encoder")
    (path.parent / "image_encoder" / "config.json").write_text(json.dumps({"projection_dim": 99}))
    assert ControlNets(str(tmp_path)).find("ip-adapter_tiny").encoder is None  # no encoder of its width
    with pytest.raises(Rejection) as info:
        ControlNets(str(tmp_path)).check(params(controls=[ControlUnit(module="ip-adapter", model="ip-adapter_tiny")]),
                                         "sd1")
    assert "no image encoder" in info.value.error.message


def test_an_ip_adapter_runs_on_torch_and_keeps_a_controlnet_beside_it_there():
    units = [ControlUnit(module="ip-adapter_clip_sd15", model="a"), ControlUnit(module="canny", model="c")]
    facts = EngineFacts(dtype="bfloat16", openvino=True, control_unet="ready")
    plan = decide(params(controls=units), facts)
    assert (plan.unet, plan.on_torch_because, plan.controls, plan.ip_adapter) == ("torch", ("IP-Adapter",), 1, True)
    alone = decide(params(controls=units[:1]), facts)
    assert (alone.controls, alone.ip_adapter, alone.engine) == (0, True, "torch bfloat16: IP-Adapter runs on torch")


def test_the_folder_lists_controlnets_with_their_family_and_skips_what_is_not_one(tmp_path):
    write_controlnet(tmp_path, "canny15", {"_class_name": "ControlNetModel", "cross_attention_dim": 768})
    write_controlnet(tmp_path, "depth21", {"_class_name": "ControlNetModel", "cross_attention_dim": 1024})
    write_controlnet(tmp_path, "xl", {"_class_name": "ControlNetModel", "addition_embed_type": "text_time"})
    write_controlnet(tmp_path, "a-unet", {"_class_name": "UNet2DConditionModel"})
    write_controlnet(tmp_path, "no-weights", {"_class_name": "ControlNetModel"}, weights=False)
    (tmp_path / "stray.safetensors").write_bytes(b"x")
    nets = ControlNets(str(tmp_path))
    assert {e.name: e.family for e in nets.entries(set())} == {"canny15": "sd1", "depth21": "sd2", "xl": "sdxl"}
    assert nets.find("canny15 [0123abcd]").family == "sd1"  # A1111's title
    assert from_config({}) == "sd1"


@pytest.mark.parametrize("unit, mode, fragment", [
    (ControlUnit(module="canny", model="xl"), "txt2img", "for sdxl models"),
    (ControlUnit(module="canny", model=""), "txt2img", "names no ControlNet"),
    (ControlUnit(module="canny", model="gone"), "txt2img", "unknown ControlNet"),
    (ControlUnit(module="openpose_face", model="canny15"), "txt2img", "does not run the preprocessor openpose_face"),
    (ControlUnit(module="lineart", model="canny15"), "txt2img", "needs its annotator model (sk_model.pth)"),
    (ControlUnit(module="canny", model="canny15", guidance_start=0.5, guidance_end=0.5), "txt2img", "not before"),
])
def test_a_unit_the_server_cannot_run_is_refused_saying_why(tmp_path, unit, mode, fragment):
    write_controlnet(tmp_path, "canny15", {"_class_name": "ControlNetModel", "cross_attention_dim": 768})
    write_controlnet(tmp_path, "xl", {"_class_name": "ControlNetModel", "addition_embed_type": "text_time"})
    with pytest.raises(Rejection) as info:
        ControlNets(str(tmp_path)).check(params(mode=mode, controls=[unit]), "sd1")
    assert fragment in info.value.error.message and info.value.error.hint


def test_a_job_with_units_runs_the_unet_on_torch_without_step_caching_or_split_guidance():
    units = [ControlUnit(module="canny", model="m")]
    plan = decide(params(controls=units, deep_cache=3, width=1024, height=1024),
                  EngineFacts(dtype="bfloat16", openvino=True, vae_tile_above=768))
    assert plan.unet == "torch" and plan.on_torch_because == ("ControlNet",) and plan.controls == 1
    assert plan.engine == "torch bfloat16: ControlNet runs on torch"
    assert plan.deep_cache == 0 and not plan.guidance_halves
    assert decide(params(), EngineFacts(dtype="bfloat16", openvino=True)).unet == "openvino"


def test_on_openvino_a_job_with_units_runs_the_control_unet_converted_once_unless_something_keeps_it_on_torch():
    units = [ControlUnit(module="canny", model="m")]
    pending = EngineFacts(dtype="bfloat16", openvino=True, control_unet="pending")
    first = decide(params(controls=units), pending)
    assert (first.unet, first.converts_first) == ("openvino-control", True)
    assert first.engine == ("openvino bfloat16, ControlNet on OpenVINO (converted to OpenVINO on this first "
                            "ControlNet job, once)")
    ready = EngineFacts(dtype="bfloat16", openvino=True, control_unet="ready")
    assert decide(params(controls=units), ready).engine == "openvino bfloat16, ControlNet on OpenVINO"
    assert decide(params(controls=units), dataclasses.replace(ready, int8="hybrid")).engine == (
        "openvino bfloat16, ControlNet on OpenVINO")  # the plain UNet's int8 is not the control UNet's
    int8 = EngineFacts(dtype="bfloat16", openvino=True, control_unet="ready", int8="hybrid", control_int8=True)
    assert decide(params(controls=units), int8).engine == "openvino int8 (weights), ControlNet on OpenVINO"
    failed = decide(params(controls=units), EngineFacts(dtype="bfloat16", openvino=True, control_unet="failed"))
    assert failed.on_torch_because == ("ControlNet",)
    no_copy = EngineFacts(dtype="bfloat16", openvino=True, control_unet="ready", control_failed=frozenset({"m"}))
    assert decide(params(controls=units), no_copy).unet == "torch"
    fast = decide(params(controls=units, preset="fast"), EngineFacts(dtype="bfloat16", openvino=True,
                                                                     control_unet="ready", fused_lcm="ready"))
    assert fast.unet == "torch" and fast.on_torch_because[-1] == "ControlNet"
    with_lora = decide(params(controls=units, loras=[LoraRef(name="ink")]), ready)
    assert with_lora.unet == "torch" and with_lora.on_torch_because == ("LoRA",)  # the LoRA alone keeps it there


def test_the_infotext_writes_each_unit_as_a1111s_extension_does():
    p = params(controls=[ControlUnit(module="canny", model="c15", weight=0.8, control_mode="control",
                                     resize_mode="fill", threshold_a=50)])
    text = infotext(p, 1, "m")
    assert ('ControlNet 0: "Module: canny, Model: c15, Weight: 0.8, Resize Mode: Resize and Fill, Processor Res: 512, '
            'Threshold A: 50, Threshold B: 200, Guidance Start: 0, Guidance End: 1, Pixel Perfect: False, '
            'Control Mode: ControlNet is more important"') in text
    assert infotext(params(mode="detect", controls=[ControlUnit(module="canny")]), 0, "m") == "Preprocessor: canny"


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture
def controlnet_dir(tmp_path):
    folder = tmp_path / "controlnets"
    folder.mkdir()
    write_controlnet(folder, "fake-canny", {"_class_name": "ControlNetModel", "cross_attention_dim": 768})
    return folder


def test_the_model_server_runs_units_with_their_images_and_detect_jobs(start_server, controlnet_dir):
    from model_server.fake_pipeline import FakePipeline

    _, client = start_server(load=lambda: FakePipeline(), controlnet_dir=str(controlnet_dir))
    unit = ControlUnit(module="invert", model="fake-canny")

    def finished(job_id: str):
        return wait_until(lambda: (j := client.get_job(job_id)).state.terminal and j, 10, 0.02, "the job")

    plain = finished(client.submit(params()).job_id)
    steered = finished(client.submit(params(controls=[unit]), control_images=[png(drawing())]).job_id)
    assert plain.state is steered.state is JobState.SUCCEEDED
    assert client.fetch(plain.job_id, 0)[1] != client.fetch(steered.job_id, 0)[1]
    assert "fake-canny" in {c.name for c in client.list_models().controlnets if c.loaded}
    detected = finished(client.submit(params(mode="detect", controls=[ControlUnit(module="invert")]),
                                      init_image=png(drawing())).job_id)
    image = Image.open(io.BytesIO(client.fetch(detected.job_id, 0)[1]))
    assert detected.engine == "preprocessor invert" and image.size == (80, 64)


def test_a_units_own_mask_is_its_region_and_the_inpaint_modules_part_to_fill(start_server, controlnet_dir):
    from model_server.fake_pipeline import FakePipeline

    _, client = start_server(load=lambda: FakePipeline(), controlnet_dir=str(controlnet_dir))
    left = Image.new("L", (80, 64))
    left.paste(255, (0, 0, 32, 64))

    def pixels(**submit) -> np.ndarray:
        job = client.submit(**submit)
        done = wait_until(lambda: (j := client.get_job(job.job_id)).state.terminal and j, 10, 0.02, "the job")
        assert done.state is JobState.SUCCEEDED, done.error
        return np.asarray(Image.open(io.BytesIO(client.fetch(job.job_id, 0)[1])).convert("RGB")).astype(int)

    unit = ControlUnit(module="invert", model="fake-canny")
    plain = pixels(params=params())
    everywhere = pixels(params=params(controls=[unit]), control_images=[png(drawing())])
    regioned = pixels(params=params(controls=[unit]), control_images=[png(drawing())], control_masks=[png(left)])
    # it steers where its mask is white (its left 32 of 80 pixels: 24 of the 64 once cropped), nowhere else
    assert np.array_equal(regioned[:, 40:], plain[:, 40:]) and np.array_equal(regioned[:, :20], everywhere[:, :20])
    inpaint = ControlUnit(module="inpaint_only", model="fake-canny")
    pixels(params=params(controls=[inpaint]), control_images=[png(drawing())], control_masks=[png(left)])


@pytest.mark.parametrize("submit, fragment", [
    ({"params": params(controls=[ControlUnit(module="inpaint_only", model="fake-canny")]),
      "control_images": [b"x"]}, "needs a mask to fill"),
    ({"params": params(controls=[ControlUnit(module="canny", model="fake-canny")]), "control_images": [b"x"],
      "control_masks": [b"", b""]}, "came with 2 masks"),
    ({"params": params(controls=[ControlUnit(module="canny", model="fake-canny")]),
      "control_images": [png(drawing())], "control_masks": [b"not an image"]}, "cannot be read"),


    ({"params": params(controls=[ControlUnit(module="canny", model="fake-canny")])}, "came with 0 images"),
    ({"params": params(controls=[ControlUnit(module="canny", model="fake-canny")]), "control_images": [b""]},
     "has no image"),
    ({"params": params(controls=[ControlUnit(module="canny", model="fake-canny")]),
      "control_images": [b"not an image"]}, "cannot be read"),
    ({"params": params(mode="detect", controls=[]), "init_image": b"x"}, "one preprocessor"),
    ({"params": params(mode="upscale", upscale=2, controls=[ControlUnit(module="canny", model="fake-canny")]),
      "init_image": b"x", "control_images": [b"x"]}, "not upscaling"),
])
def test_units_and_images_that_do_not_fit_are_refused_at_submit(start_server, controlnet_dir, submit, fragment):
    from gateway.model_client import RemoteError
    from model_server.fake_pipeline import FakePipeline

    _, client = start_server(load=lambda: FakePipeline(), controlnet_dir=str(controlnet_dir))
    with pytest.raises(RemoteError) as info:
        client.submit(**submit)
    assert info.value.error.code is ErrorCode.INVALID_PARAMS and fragment in info.value.error.message
