"""ControlNet and IP-Adapter on the real service: tiny random-weight ControlNets for ``tiny`` (SD 1.x) and
``tiny-sdxl`` and a tiny IP-Adapter for ``tiny`` with its image encoder in CONTROLNET_DIR (beside a folder
that is no ControlNet), random-weight line art, HED and Depth Anything annotators in ANNOTATOR_DIR, through
the native API, A1111's ControlNet extension API with ``webuiapi``'s own helpers, and the hostile inputs a
public server gets."""

from __future__ import annotations

import base64
import io
import time
from urllib.parse import urlparse

import numpy as np
import pytest
import requests
import webuiapi
from PIL import Image, ImageDraw

from tests.integration.conftest import start_stack, stop_stack

pytestmark = pytest.mark.slow
SMALL = {"steps": 3, "width": 64, "height": 64, "seed": 7}


@pytest.fixture(scope="module")
def stack(log_dir, tiny_model_dir, tmp_path_factory):
    from model_server.engine.stand_in_annotators import write_stand_in_annotators
    from model_server.engine.tiny_controlnets import write_tiny_controlnets, write_tiny_ip_adapter

    folder = tmp_path_factory.mktemp("controlnets")
    write_tiny_controlnets(folder)
    write_tiny_ip_adapter(folder)
    write_tiny_ip_adapter(folder, family="sdxl")
    write_tiny_ip_adapter(folder, plus=True)
    (folder / "notes").mkdir()
    (folder / "notes" / "config.json").write_text("not json")
    annotators = tmp_path_factory.mktemp("annotators")
    write_stand_in_annotators(annotators, ("lineart", "hed", "depth_anything"))
    # OpenVINO whatever the CPU: `auto` keeps float32 (a CPU without bf16) on torch, and the units' engines differ
    stack = start_stack(log_dir, tiny_model_dir, {"GATEWAY_WORKERS": 1}, CONTROLNET_DIR=folder,
                        ANNOTATOR_DIR=annotators, SD_MODELS="tiny-sdxl", SD_BACKEND="openvino")
    yield stack
    stop_stack(stack)
    assert "Traceback" not in stack.gateway.log() and "Traceback" not in stack.model_server.log()


@pytest.fixture
def api(stack):
    url = urlparse(stack.url)
    return webuiapi.WebUIApi(host=url.hostname, port=url.port)


def drawing(size=(64, 64)) -> Image.Image:
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    draw.ellipse((8, 8, size[0] - 8, size[1] - 8), outline="black", width=3)
    draw.line((0, size[1] // 2, size[0], size[1] // 2), fill="black", width=2)
    return image


def b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def generate(stack, **body) -> requests.Response:
    return requests.post(stack.url + "/generate", json={"prompt": "a cat", **SMALL, **body}, timeout=120)


def health_of(stack) -> dict:
    return requests.get(stack.url + "/health", timeout=10).json()["optimizations"]


def pixels(response: requests.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB")).astype(int)


def unit(**fields) -> dict:
    return {"image": b64(drawing()), "module": "canny", "model": "tiny-controlnet", **fields}


def test_the_controlnets_and_preprocessors_are_listed_natively_and_as_a1111s_extension_lists_them(stack, api):
    listing = requests.get(stack.url + "/v1/controlnets", timeout=10).json()
    nets = {c["name"]: c for c in listing["controlnets"]}
    assert set(nets) == {"tiny-controlnet", "tiny-sdxl-controlnet", "ip-adapter_tiny", "ip-adapter_tiny_sdxl",
                         "ip-adapter-plus_tiny", "tiny-controlnet-single"}
    assert nets["ip-adapter_tiny_sdxl"]["family"] == "sdxl"
    assert nets["ip-adapter_tiny"]["kind"] == "ip-adapter" and nets["tiny-controlnet"]["kind"] == "controlnet"
    assert (nets["tiny-controlnet"]["family"], nets["tiny-sdxl-controlnet"]["family"]) == ("sd1", "sdxl")
    modules = {m["name"]: m for m in listing["modules"]}
    assert modules["canny"]["available"] and modules["canny"]["threshold_a"]["value"] == 100
    assert modules["depth_midas"]["available"] is False and modules["openpose"]["available"] is False
    assert modules["softedge_hed"]["available"] and modules["depth_anything_v2"]["annotator"] == "depth_anything"
    assert api.controlnet_version() == 2
    assert sorted(api.controlnet_model_list()) == ["ip-adapter-plus_tiny", "ip-adapter_tiny", "ip-adapter_tiny_sdxl",
                                                   "tiny-controlnet", "tiny-controlnet-single",
                                                   "tiny-sdxl-controlnet"]  # "notes" is none
    modules = api.controlnet_module_list()
    assert {"none", "canny", "inpaint_only", "tile_resample", "lineart_realistic", "depth_anything"} <= set(modules)
    assert "mlsd" not in modules and "depth_midas" not in modules  # their annotators are not here
    detail = requests.get(stack.url + "/controlnet/module_list", timeout=10).json()["module_detail"]
    assert [s["name"] for s in detail["canny"]["sliders"]] == ["Preprocessor Resolution", "Canny Low Threshold",
                                                               "Canny High Threshold"]
    assert requests.get(stack.url + "/controlnet/settings", timeout=10).json() == {"control_net_unit_count": 3}
    types = requests.get(stack.url + "/controlnet/control_types", timeout=10).json()["control_types"]
    assert types["Canny"]["default_option"] == "canny" and "tiny-controlnet" in types["All"]["model_list"]
    assert types["Depth"]["module_list"] == ["none", "depth_anything", "depth_anything_v2"]


def test_a_unit_steers_the_image_by_its_weight_and_both_networks_run_on_openvino(stack):
    plain = pixels(generate(stack))
    steered = generate(stack, controls=[unit()])
    again = pixels(generate(stack, controls=[unit()]))
    assert np.array_equal(pixels(steered), again)  # seeded: the same unit, the same image
    assert np.abs(pixels(steered) - plain).mean() > 1
    weaker = pixels(generate(stack, controls=[unit(weight=0.3)]))
    assert not np.array_equal(weaker, again)
    job = requests.get(f"{stack.url}/v1/jobs/{steered.headers['X-Job-Id']}", timeout=5).json()
    assert job["engine"] == f"openvino {health_of(stack)['dtype']}, ControlNet on OpenVINO"  # converted on the first
    assert job["params"]["controls"][0]["model"] == "tiny-controlnet"
    assert "image" not in job["params"]["controls"][0]  # the control image stays out of the job's record
    info = Image.open(io.BytesIO(steered.content)).info["parameters"]
    assert 'ControlNet 0: "Module: canny, Model: tiny-controlnet, Weight: 1, Resize Mode: Crop and Resize' in info
    assert "Threshold A: 100, Threshold B: 200" in info  # the module's defaults, as written


def test_a_single_file_controlnet_steers_as_its_folder_does(stack):
    folder = pixels(generate(stack, controls=[unit()]))
    single = pixels(generate(stack, controls=[unit(model="tiny-controlnet-single")]))  # the same weights, one file
    assert np.array_equal(single, folder)
    on_torch = pixels(generate(stack, controls=[unit(model="tiny-controlnet-single")], token_merging=0.5))
    assert on_torch.shape == (64, 64, 3)  # token merging keeps the job on torch: the file loads there too


def test_control_modes_ranges_and_several_units_each_change_the_image(stack):
    base = pixels(generate(stack, controls=[unit()]))
    variants = [[unit(control_mode="prompt")], [unit(control_mode="control")], [unit(guidance_end=0.4)],
                [unit(), unit(module="blur_gaussian", weight=0.5, resize_mode="fill")]]
    made = [pixels(generate(stack, controls=units)) for units in variants]
    for units, image in zip(variants, made):
        assert not np.array_equal(image, base), units
    assert len({m.tobytes() for m in made}) == len(made)


def test_img2img_units_take_the_init_image_and_inpaint_only_fills_the_masked_part(stack):
    init = Image.new("RGB", (64, 64), (30, 160, 220))
    ImageDraw.Draw(init).rectangle((16, 16, 48, 48), fill="white")
    img2img = generate(stack, init_image=b64(init), strength=0.7,
                       controls=[{"module": "canny", "model": "tiny-controlnet"}])
    assert pixels(img2img).shape == (64, 64, 3)
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))
    body = {"init_image": b64(init), "mask": b64(mask), "mask_blur": 0, "strength": 0.9,
            "controls": [{"module": "inpaint_only", "model": "tiny-controlnet"}]}
    painted = pixels(generate(stack, **body))
    assert np.abs(painted[:, 40:] - np.asarray(init)[:, 40:]).max() == 0  # the kept half is the original


def test_a_units_mask_is_where_it_steers_on_every_api(stack, api):
    def mask(box) -> str:
        image = Image.new("L", (64, 64))
        image.paste(255, box)
        return b64(image)

    nowhere, everywhere, left = mask((0, 0, 0, 0)), mask((0, 0, 64, 64)), mask((0, 0, 32, 64))
    unmasked = pixels(generate(stack, controls=[unit()]))
    assert np.array_equal(pixels(generate(stack, controls=[unit(mask=everywhere)])), unmasked)
    assert np.array_equal(pixels(generate(stack, controls=[unit(mask=nowhere)])),
                          pixels(generate(stack, controls=[unit(weight=0)])))  # no region: no steering
    halved = pixels(generate(stack, controls=[unit(mask=left)]))
    assert not np.array_equal(halved, unmasked) and not np.array_equal(halved, pixels(generate(stack)))
    # the inpaint ControlNet fills the unit's own mask in text-to-image
    filled = generate(stack, controls=[unit(module="inpaint_only", mask=left)])
    assert filled.status_code == 200, filled.text
    def a1111(**fields):  # the same job through webuiapi, its unit given ``fields``
        cn = webuiapi.ControlNetUnit(image=drawing(), module="canny", model="tiny-controlnet", **fields)
        return np.asarray(api.txt2img(prompt="a cat", **SMALL, controlnet_units=[cn], alwayson_scripts={}).image)

    assert np.array_equal(a1111(mask=Image.new("RGB", (64, 64))), a1111(weight=0))  # A1111's unit mask, black


def test_an_sdxl_model_takes_its_own_family_of_controlnet_and_refuses_the_other(stack):
    sdxl = generate(stack, model="tiny-sdxl", controls=[unit(model="tiny-sdxl-controlnet")])
    assert pixels(sdxl).shape == (64, 64, 3)
    wrong = generate(stack, model="tiny-sdxl", controls=[unit()])
    assert wrong.status_code == 400 and "for sd1 models" in wrong.json()["error"]


def test_an_sdxl_ip_adapter_steers_an_sdxl_model_and_each_family_refuses_the_others(stack):
    reference = Image.effect_mandelbrot((96, 96), (-2, -1.5, 1, 1.5), 100).convert("RGB")

    def adapter(name: str) -> dict:
        return {"image": b64(reference), "module": "ip-adapter_clip_sdxl", "model": name}

    plain = pixels(generate(stack, model="tiny-sdxl"))
    adapted = generate(stack, model="tiny-sdxl", controls=[adapter("ip-adapter_tiny_sdxl")])
    assert np.abs(pixels(adapted) - plain).mean() > 1
    assert np.array_equal(pixels(generate(stack, model="tiny-sdxl")), plain)  # taken off again
    for model, name, family in (({"model": "tiny-sdxl"}, "ip-adapter_tiny", "sd1"),
                                 ({}, "ip-adapter_tiny_sdxl", "sdxl")):  # {}: the default model, tiny
        wrong = generate(stack, **model, controls=[adapter(name)])
        assert wrong.status_code == 400 and f"for {family} models" in wrong.json()["error"]


def test_an_ip_adapter_unit_steers_by_its_reference_image_on_torch_and_leaves_later_jobs_alone(stack, api):
    plain = pixels(generate(stack))
    reference = Image.effect_mandelbrot((96, 96), (-2, -1.5, 1, 1.5), 100).convert("RGB")
    adapted = generate(stack, controls=[{"image": b64(reference), "module": "ip-adapter", "model": "ip-adapter_tiny"}])
    assert np.abs(pixels(adapted) - plain).mean() > 1
    job = requests.get(f"{stack.url}/v1/jobs/{adapted.headers['X-Job-Id']}", timeout=5).json()
    assert job["engine"].endswith("IP-Adapter runs on torch")
    both = generate(stack, controls=[{"image": b64(reference), "module": "ip-adapter", "model": "ip-adapter_tiny",
                                      "weight": 0.6}, unit()])
    assert not np.array_equal(pixels(both), pixels(adapted))
    assert np.array_equal(pixels(generate(stack)), plain)  # taken off again: the plain job is as before
    plus = generate(stack, controls=[{"image": b64(reference), "module": "ip-adapter",
                                      "model": "ip-adapter-plus_tiny"}])
    assert np.abs(pixels(plus) - plain).mean() > 1 and not np.array_equal(pixels(plus), pixels(adapted))
    assert np.array_equal(pixels(generate(stack)), plain)  # the plus variant's Resampler taken off too
    cn = webuiapi.ControlNetUnit(image=reference, module="ip-adapter_clip_sd15", model="ip-adapter_tiny [1234abcd]")
    result = api.txt2img(prompt="a cat", seed=3, steps=2, width=64, height=64, controlnet_units=[cn],
                         alwayson_scripts={})
    assert 'Module: ip-adapter, Model: ip-adapter_tiny' in result.info["infotexts"][0]


def test_webuiapis_controlnet_units_and_detect_run_unchanged(api, stack):
    # (Each call gets its own alwayson_scripts: webuiapi's default is one dict its calls add the units to, so a
    # later call without units would send the earlier ones again.)
    cn = webuiapi.ControlNetUnit(image=drawing(), module="canny", model="tiny-controlnet [abc123]",
                                 threshold_a=50, threshold_b=150, control_mode=1, pixel_perfect=True)
    result = api.txt2img(prompt="a cat", seed=3, steps=2, width=64, height=64, controlnet_units=[cn],
                          alwayson_scripts={})
    assert result.image.size == (64, 64)
    # the extension's answer: the image, then the unit's detected map (canny's edges at the job's size)
    assert len(result.images) == 2 and len(result.info["all_seeds"]) == len(result.info["infotexts"]) == 1
    edges = np.asarray(result.images[1].convert("L"))
    assert edges.shape == (64, 64) and set(np.unique(edges)) == {0, 255}
    assert 'ControlNet 0: "Module: canny, Model: tiny-controlnet' in result.info["infotexts"][0]
    assert "Control Mode: My prompt is more important" in result.info["infotexts"][0]
    plain = api.txt2img(prompt="a cat", seed=3, steps=2, width=64, height=64, alwayson_scripts={})
    assert not np.array_equal(np.asarray(result.image), np.asarray(plain.image))
    off = webuiapi.ControlNetUnit(image=drawing(), module="canny", model="tiny-controlnet", enabled=False)
    skipped = api.txt2img(prompt="a cat", seed=3, steps=2, width=64, height=64, controlnet_units=[off],
                          alwayson_scripts={})
    assert np.array_equal(np.asarray(skipped.image), np.asarray(plain.image))  # a disabled unit does nothing
    init = Image.new("RGB", (64, 64), (200, 60, 60))
    img2img = api.img2img(images=[init], prompt="a cat", seed=3, steps=4, width=64, height=64,
                          denoising_strength=0.6, alwayson_scripts={}, controlnet_units=[webuiapi.ControlNetUnit(
                              module="tile_resample", model="tiny-controlnet", threshold_a=2)])
    assert img2img.image.size == (64, 64)
    detected = api.controlnet_detect([drawing((96, 80))], module="canny", processor_res=128, threshold_a=50,
                                     threshold_b=100)
    edges = np.asarray(detected.image.convert("L"))
    assert detected.info == "Success" and edges.shape == (128, 154)  # its shorter side at processor_res
    assert set(np.unique(edges)) == {0, 255} and (edges == 255).mean() > 0.01


def test_annotator_preprocessors_make_maps_and_steer_units_on_every_api(stack, api):
    photo = Image.new("RGB", (80, 64), (40, 90, 160))
    ImageDraw.Draw(photo).rectangle((20, 16, 60, 48), fill=(230, 200, 40))
    depth = generate(stack, controls=[unit(module="depth_anything_v2", image=b64(photo))])
    hed = generate(stack, controls=[unit(module="softedge_hed", image=b64(photo))])
    plain = pixels(generate(stack))
    assert not np.array_equal(pixels(depth), plain) and not np.array_equal(pixels(depth), pixels(hed))
    detected = api.controlnet_detect([photo], module="lineart", processor_res=128)  # the old name of lineart_realistic
    assert detected.info == "Success" and min(detected.image.size) == 128
    cn = webuiapi.ControlNetUnit(image=photo, module="depth_anything", model="tiny-controlnet", pixel_perfect=True)
    result = api.txt2img(prompt="a cat", seed=3, steps=2, width=64, height=64, controlnet_units=[cn],
                         alwayson_scripts={})
    assert 'Module: depth_anything, Model: tiny-controlnet' in result.info["infotexts"][0]
    response = requests.post(stack.url + "/v1/detect", json={"image": b64(photo), "module": "scribble_hed",
                                                             "processor_res": 64}, timeout=10)
    assert response.status_code == 202, response.text
    job = wait_job(stack, response.json()["id"])
    assert job["state"] == "succeeded" and job["engine"] == "preprocessor scribble_hed"
    missing = requests.post(stack.url + "/controlnet/detect", json={"controlnet_module": "mlsd",
                                                                    "controlnet_input_images": [b64(photo)]},
                            timeout=10)
    assert missing.status_code == 422 and "mlsd_large_512_fp32.pth" in missing.json()["detail"][0]["msg"]


def wait_job(stack, job_id: str) -> dict:
    for _ in range(400):
        job = requests.get(f"{stack.url}/v1/jobs/{job_id}", timeout=5).json()
        if job["state"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not end: {job}")


def test_a_unit_that_asks_gets_its_detected_map_after_the_images_and_a1111_can_decline_it(stack):
    body = {"prompt": "a cat", **SMALL, "n": 2, "controls": [
        unit(module="invert", return_map=True), unit(module="ip-adapter", model="ip-adapter_tiny", return_map=True),
        unit(module="canny", weight=0.5)]}
    response = requests.post(stack.url + "/v1/jobs", json=body, timeout=10)
    assert response.status_code == 202, response.text
    job = wait_job(stack, response.json()["id"])
    assert job["state"] == "succeeded", job
    # two images, then the one map asked for (an IP-Adapter's unit has none, the third did not ask)
    assert [i["control_map"] for i in job["images"]] == [None, None, 0]
    shown = requests.get(stack.url + job["images"][2]["url"], timeout=5)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(shown.content)).convert("RGB")),
                          255 - np.asarray(drawing()))  # invert's map at the job's 64x64
    scripts = {"controlnet": {"args": [{"image": b64(drawing()), "module": "canny", "model": "tiny-controlnet",
                                        "save_detected_map": False}]}}
    declined = requests.post(stack.url + "/sdapi/v1/txt2img", json={"prompt": "a cat", "steps": 2, "width": 64,
                                                                    "height": 64, "alwayson_scripts": scripts},
                             timeout=60)
    assert declined.status_code == 200 and len(declined.json()["images"]) == 1


def test_the_native_detect_job_returns_the_map_a_unit_would_use(stack):
    response = requests.post(stack.url + "/v1/detect", json={"image": b64(drawing()), "module": "invert"},
                             timeout=10)
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    for _ in range(200):
        job = requests.get(f"{stack.url}/v1/jobs/{job_id}", timeout=5).json()
        if job["state"] == "succeeded":
            break
    image = Image.open(io.BytesIO(requests.get(f"{stack.url}/v1/jobs/{job_id}/image", timeout=5).content))
    assert job["engine"] == "preprocessor invert"
    assert np.array_equal(np.asarray(image.convert("RGB")), 255 - np.asarray(drawing()))


@pytest.mark.parametrize("controls, fragment", [
    ([unit(module="sobel")], "unknown preprocessor"),
    ([unit(module="depth_midas")], "needs its annotator model (a dpt folder"),
    ([unit(module="openpose")], "needs its annotator model (body_pose_model.pth)"),
    ([unit(module="openpose_hand")], "does not run the preprocessor openpose_hand"),
    ([unit(model="nope")], "unknown ControlNet"),
    ([unit(model="notes")], "unknown ControlNet"),
    ([unit()] * 4, "length <= 3"),
    ([unit(image=None)], "has no image"),
    ([unit(image="!!notbase64")], "not valid base64"),
    ([unit(image=base64.b64encode(b"GIF89a not an image").decode())], "cannot be read"),
    ([unit(guidance_start=0.8, guidance_end=0.2)], "is not before"),
    ([unit(weight=3)], "controls"),
    ([unit(module="inpaint_only")], "needs a mask to fill"),
    ([unit(mask="!!notbase64")], "not valid base64"),
    ([unit(control_mode="loud")], "controls"),
    ([unit(model="ip-adapter_tiny")], "is an IP-Adapter"),
    ([unit(module="ip-adapter")], "is a ControlNet"),
    ([unit(module="ip-adapter", model="ip-adapter_tiny")] * 2, "one runs per job"),
    ("canny", "controls"),
])
def test_hostile_units_are_clean_400s(stack, controls, fragment):
    response = generate(stack, controls=controls)
    assert response.status_code == 400, response.text
    error = response.json()
    assert fragment in error["error"] and error["hint"]


def test_a_huge_control_image_is_refused_before_it_is_decoded(stack):
    buffer = io.BytesIO()
    Image.new("1", (12000, 12000)).save(buffer, "PNG")  # a few KB that would decode to 144 megapixels
    response = generate(stack, controls=[unit(image=base64.b64encode(buffer.getvalue()).decode())])
    assert response.status_code == 400 and "pixels" in response.json()["error"]


@pytest.mark.parametrize("scripts, fragment", [
    ({"controlnet": {"args": "canny"}}, "must be a list"),
    ({"ControlNet": {"args": [{"module": "canny", "model": "tiny-controlnet", "control_mode": "loud"}]}},
     "control_mode"),
    ({"controlnet": {"args": [{"model": "tiny-controlnet", "weight": "heavy"}]}}, "must be a number"),
    ({"controlnet": {"args": [{"model": "tiny-controlnet", "image": 5}]}}, "base64 text"),
])
def test_hostile_a1111_units_are_422s_in_fastapis_shape(stack, scripts, fragment):
    response = requests.post(stack.url + "/sdapi/v1/txt2img", json={"prompt": "a cat", "steps": 2, "width": 64,
                                                                     "height": 64, "alwayson_scripts": scripts},
                             timeout=30)
    assert response.status_code == 422, response.text
    assert fragment in response.json()["detail"][0]["msg"]


def test_detect_refuses_what_the_extension_refuses(stack):
    for body, fragment in (({"controlnet_module": "canny", "controlnet_input_images": []}, "No image selected"),
                           ({"controlnet_module": "openpose_full", "controlnet_input_images": [b64(drawing())]},
                            "Module not available")):
        response = requests.post(stack.url + "/controlnet/detect", json=body, timeout=10)
        assert response.status_code == 422 and fragment in response.json()["detail"][0]["msg"]
