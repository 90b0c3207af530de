"""Finishing on the real service: upscale jobs and the hires fix through the native API and A1111's
(``webuiapi``), with tiny random-weight upscalers in the real architectures' layouts (ESRGAN ``.pth``,
Real-ESRGAN Compact and SPAN ``.safetensors``) in UPSCALER_DIR beside a file that is no model."""

from __future__ import annotations

import base64
import io
from urllib.parse import urlparse

import pytest
import requests
import webuiapi
from PIL import Image

from tests.integration.conftest import sse_events, start_stack, stop_stack

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(log_dir, tiny_model_dir, tmp_path_factory):
    from model_server.engine.tiny_upscalers import write_tiny_upscalers

    folder = tmp_path_factory.mktemp("upscalers")
    write_tiny_upscalers(folder)
    (folder / "notes.pth").write_bytes(b"these are notes, not a model\n" * 10)
    stack = start_stack(log_dir, tiny_model_dir, {"GATEWAY_WORKERS": 1}, UPSCALER_DIR=folder, UPSCALE_TILE=64,
                        MAX_UPSCALE_SIZE=2048)
    yield stack
    stop_stack(stack)
    assert "Traceback" not in stack.gateway.log() and "Traceback" not in stack.model_server.log()


def png(size=(96, 64), color=(200, 80, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "PNG")
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def upscale(stack, **body) -> requests.Response:
    return requests.post(stack.url + "/v1/upscale", json=body, timeout=30)


def finished(stack, response: requests.Response) -> tuple[dict, list[tuple[str, dict]]]:
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    with requests.get(f"{stack.url}/v1/jobs/{job_id}/events", stream=True, timeout=120) as events:
        seen = list(sse_events(events))
    return requests.get(f"{stack.url}/v1/jobs/{job_id}", timeout=5).json(), seen


def image_of(stack, job: dict) -> Image.Image:
    data = requests.get(f"{stack.url}/v1/jobs/{job['id']}/image", timeout=10).content
    return Image.open(io.BytesIO(data))


def test_the_upscalers_are_listed_with_their_kinds_and_scales(stack):
    listed = {u["name"]: u for u in requests.get(stack.url + "/v1/upscalers", timeout=10).json()["upscalers"]}
    assert {"None", "Lanczos", "Nearest"} <= {n for n, u in listed.items() if u["kind"] == "builtin"}
    assert "Latent" in listed and listed["Latent"]["kind"] == "latent"
    models = {n: u["scale"] for n, u in listed.items() if u["kind"] == "model"}
    assert models == {"4x-tiny-esrgan": 4, "tiny-compact-x2": 2, "tiny-span-x4": 4, "notes": None}


def test_an_upscale_job_runs_in_tiles_with_progress_and_keeps_its_factor(stack):
    job, events = finished(stack, upscale(stack, image=b64(png((160, 96))), upscaler="4x-tiny-esrgan", scale=4))
    assert job["state"] == "succeeded", job
    assert image_of(stack, job).size == (640, 384)
    progress = [data["progress"] for name, data in events if name == "progress" and data.get("progress")]
    totals = {p["total_steps"] for p in progress if p.get("total_steps")}
    assert totals == {6}, progress  # 160x96 in 64-pixel tiles overlapping by 16: 3 x 2
    assert "ESRGAN x4" in job["engine"]
    info = image_of(stack, job).info["parameters"]
    assert info == "Postprocess upscale by: 4, Postprocess upscaler: 4x-tiny-esrgan"


@pytest.mark.parametrize("name, size", [("4x-tiny-esrgan", (192, 128)), ("tiny-compact-x2", (192, 128)),
                                        ("tiny-span-x4", (192, 128)), ("Lanczos", (192, 128)),
                                        ("Nearest", (192, 128)), ("None", (96, 64))])
def test_every_upscaler_reaches_the_factor_asked(stack, name, size):
    job, _ = finished(stack, upscale(stack, image=b64(png()), upscaler=name, scale=2))
    assert job["state"] == "succeeded", job
    assert image_of(stack, job).size == size


def test_an_upscale_to_a_size_covers_it_and_crops(stack):
    job, _ = finished(stack, upscale(stack, image=b64(png()), upscaler="tiny-compact-x2", width=200, height=200))
    assert job["state"] == "succeeded", job
    assert image_of(stack, job).size == (200, 200)


def test_a_multipart_upload_is_an_upscale_job_too(stack):
    response = requests.post(stack.url + "/v1/upscale", files={"image": ("a.png", png(), "image/png")},
                             data={"scale": "2", "upscaler": "Lanczos", "format": "jpeg"}, timeout=30)
    job, _ = finished(stack, response)
    assert job["state"] == "succeeded" and image_of(stack, job).format == "JPEG"


@pytest.mark.parametrize("body, field, words", [
    ({"upscaler": "R-ESRGAN 4x+"}, "upscaler", "unknown upscaler"),
    ({"upscaler": "Latent"}, "upscaler", "hires fix"),
    ({"upscaler_2": "R-ESRGAN 4x+", "upscaler_2_visibility": 0.5}, "upscaler_2", "unknown upscaler"),
    ({"upscaler_2": "Latent", "upscaler_2_visibility": 0.5}, "upscaler_2", "hires fix"),
    ({"upscaler_2_visibility": 1.5}, "upscaler_2_visibility", "<= 1"),
    ({"scale": 9}, "", "scale"),
    ({"scale": 0.5}, "scale", ">= 1"),
    ({"width": 300}, "height", "both width and height"),
])
def test_a_bad_upscale_is_a_clear_400(stack, body, field, words):
    response = upscale(stack, image=b64(png()), **body)
    assert response.status_code == 400, response.text
    error = response.json()
    assert words in error["error"] + error.get("hint", ""), error
    if field:
        assert error.get("field") == field, error


def test_an_upscale_past_the_largest_result_is_refused_with_the_factor_that_fits(stack):
    response = upscale(stack, image=b64(png((1024, 1024))), upscaler="Lanczos", scale=4)
    assert response.status_code == 400, response.text
    assert "MAX_UPSCALE_SIZE" in response.json()["error"] and "2.00" in response.json()["hint"]


def test_a_file_that_is_no_model_fails_its_job_with_a_reason_and_the_server_goes_on(stack):
    job, _ = finished(stack, upscale(stack, image=b64(png()), upscaler="notes", scale=2))
    assert job["state"] == "failed"
    assert "notes.pth" in job["error"]["message"] and job["error"]["hint"]
    again, _ = finished(stack, upscale(stack, image=b64(png()), upscaler="Lanczos", scale=2))
    assert again["state"] == "succeeded"


def test_an_upscale_job_is_cancelled_between_tiles(stack):
    response = upscale(stack, image=b64(png((1000, 1000))), upscaler="4x-tiny-esrgan", scale=2)
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    cancelled = False
    with requests.get(f"{stack.url}/v1/jobs/{job_id}/events", stream=True, timeout=60) as events:
        for name, data in sse_events(events):
            if name == "progress" and (data.get("progress") or {}).get("step") and not cancelled:
                cancelled = requests.delete(f"{stack.url}/v1/jobs/{job_id}", timeout=5).ok  # once: then it deletes
            if name in ("completed", "failed", "cancelled"):
                break
    assert name == "cancelled", data
    assert 0 < data["progress"]["step"] < data["progress"]["total_steps"] == 256  # 16 x 16 tiles


def test_the_hires_fix_makes_the_larger_image_in_one_job_that_counts_both_passes(stack):
    body = {"prompt": "a lighthouse", "steps": 4, "width": 64, "height": 64, "seed": 3,
            "hires": {"scale": 2, "steps": 4, "strength": 0.5}}
    job, events = finished(stack, requests.post(stack.url + "/v1/jobs", json=body, timeout=30))
    assert job["state"] == "succeeded", job
    assert image_of(stack, job).size == (128, 128)
    totals = {data["progress"]["total_steps"] for name, data in events if data.get("progress")}
    assert totals == {4 + 2}
    details = {data["progress"].get("detail") for name, data in events if data.get("progress")}
    assert "hires fix: second pass at 128x128" in details
    info = image_of(stack, job).info["parameters"]
    assert "Hires upscale: 2, Hires steps: 4, Hires upscaler: Latent" in info


@pytest.mark.parametrize("upscaler", ["Latent (bicubic antialiased)", "Lanczos", "tiny-compact-x2"])
def test_the_hires_fix_takes_latent_and_pixel_upscalers_and_its_own_size(stack, upscaler):
    body = {"prompt": "a lighthouse", "steps": 2, "width": 64, "height": 64,
            "hires": {"width": 128, "height": 96, "upscaler": upscaler, "prompt": "a lighthouse at night"}}
    response = requests.post(stack.url + "/generate", json=body, timeout=60)
    assert response.status_code == 200, response.text
    assert Image.open(io.BytesIO(response.content)).size == (128, 96)


@pytest.mark.parametrize("hires, words", [
    ({"scale": 4}, "outside"),  # 512 x 4 past MAX_WIDTH
    ({"upscaler": "R-ESRGAN 4x+"}, "unknown upscaler"),
    ({"strength": 0}, "strength"),
])
def test_a_hires_fix_that_cannot_run_is_a_clear_400(stack, hires, words):
    response = requests.post(stack.url + "/v1/jobs", json={"prompt": "a cat", "hires": hires}, timeout=10)
    assert response.status_code == 400, response.text
    assert words in response.text


@pytest.fixture
def api(stack):
    url = urlparse(stack.url)
    return webuiapi.WebUIApi(host=url.hostname, port=url.port)


def test_webuiapi_txt2img_with_enable_hr_returns_the_hires_image_and_its_infotext(api):
    result = api.txt2img(prompt="a cat", steps=2, width=64, height=64, enable_hr=True, hr_scale=2,
                         hr_upscaler=webuiapi.HiResUpscaler.Latent, hr_second_pass_steps=2, denoising_strength=0.6)
    assert result.image.size == (128, 128)
    assert "Hires upscale: 2" in result.info["infotexts"][0]
    assert result.info["denoising_strength"] == 0.6 and "enable_hr" not in result.info["not_applied"]


def test_webuiapi_lists_upscalers_and_latent_modes(api):
    names = [u["name"] for u in api.get_upscalers()]
    assert names[:3] == ["None", "Lanczos", "Nearest"] and "4x-tiny-esrgan" in names and "Latent" not in names
    assert "Latent (nearest-exact)" in [m["name"] for m in api.get_latent_upscale_modes()]


def test_webuiapi_extras_upscale_one_image_and_a_batch(api):
    image = Image.new("RGB", (80, 48), (10, 120, 200))
    single = api.extra_single_image(image, upscaler_1="tiny-compact-x2", upscaling_resize=2)
    assert single.image.size == (160, 96)
    batch = api.extra_batch_images([image, image], upscaler_1="Lanczos", upscaling_resize=3)
    assert [i.size for i in batch.images] == [(240, 144), (240, 144)]
    sized = api.extra_single_image(image, resize_mode=1, upscaling_resize_w=100, upscaling_resize_h=100,
                                   upscaler_1="Nearest", codeformer_visibility=1)
    assert sized.image.size == (100, 100)
    assert "no face restorer is configured" in sized.info


def test_a1111_extras_refuse_a_latent_upscaler_in_its_own_shape(stack):
    response = requests.post(stack.url + "/sdapi/v1/extra-single-image",
                             json={"image": b64(png()), "upscaler_1": "Latent"}, timeout=10)
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "upscaler_1"]


def test_face_restoration_without_a_restorer_is_refused_naming_the_setting(stack):
    assert requests.get(stack.url + "/v1/face-restorers", timeout=10).json() == {"face_restorers": [],
                                                                                 "detector": None}
    for route, body in (("/v1/jobs", {"prompt": "a portrait"}), ("/v1/upscale", {"image": b64(png())})):
        response = requests.post(stack.url + route, json={**body, "face_restoration": {}}, timeout=10)
        assert response.status_code == 400, response.text
        assert response.json()["field"] == "face_restoration" and "FACE_RESTORER_DIR" in response.json()["hint"]


def test_a_second_upscaler_is_blended_in_at_its_visibility(stack):
    import numpy as np

    source = Image.effect_noise((48, 40), 60).convert("RGB")
    buffer = io.BytesIO()
    source.save(buffer, "PNG")
    image = b64(buffer.getvalue())
    alone = {}
    for name in ("Nearest", "tiny-compact-x2"):
        job, _ = finished(stack, upscale(stack, image=image, upscaler=name, scale=2))
        alone[name] = np.array(image_of(stack, job).convert("RGB")).astype(int)
    job, events = finished(stack, upscale(stack, image=image, upscaler="Nearest", scale=2,
                                          upscaler_2="tiny-compact-x2", upscaler_2_visibility=0.25))
    assert job["state"] == "succeeded", job
    blended = image_of(stack, job)
    expected = alone["Nearest"] * 0.75 + alone["tiny-compact-x2"] * 0.25
    assert np.abs(np.array(blended.convert("RGB")) - expected).max() <= 1
    assert "upscaler Nearest + upscaler tiny-compact-x2 (RealESRGAN Compact x2" in job["engine"]
    assert job["engine"].endswith("at 0.25")
    assert "Postprocess upscaler 2: tiny-compact-x2, Postprocess upscaler 2 visibility: 0.25" in \
        blended.info["parameters"]
    totals = {data["progress"]["total_steps"] for name, data in events if data.get("progress", {}).get("total_steps")}
    assert totals == {2}  # Nearest's one step and the model's one tile


def test_a1111_extras_blend_upscaler_2(api):
    image = Image.new("RGB", (80, 48), (10, 120, 200))
    result = api.extra_single_image(image, upscaler_1="Lanczos", upscaler_2="tiny-compact-x2",
                                    extras_upscaler_2_visibility=0.5, upscaling_resize=2)
    assert result.image.size == (160, 96) and "upscaler 2" not in result.info


def test_a_pngs_settings_are_read_back_natively_and_as_a1111_does(stack):
    body = {"prompt": "a (lighthouse:1.2) at dusk", "negative_prompt": "fog", "steps": 3, "seed": 77,
            "width": 96, "height": 64, "scheduler": "euler_a"}
    made = requests.post(stack.url + "/generate", json=body, timeout=60)
    assert made.status_code == 200
    read = requests.post(stack.url + "/v1/png-info", files={"image": ("x.png", made.content, "image/png")}, timeout=10)
    assert read.status_code == 200, read.text
    params = read.json()["params"]
    assert {k: params[k] for k in body} == body and read.json()["infotext"].startswith(body["prompt"])
    again = requests.post(stack.url + "/generate", json=params, timeout=60)
    assert again.content == made.content  # the settings read back make the same image
    a1111 = requests.post(stack.url + "/sdapi/v1/png-info", json={"image": b64(made.content)}, timeout=10).json()
    assert a1111["parameters"]["Prompt"] == body["prompt"] and a1111["parameters"]["Seed"] == "77"
    refused = requests.post(stack.url + "/sdapi/v1/png-info", json={"image": b64(b"GIF89a not a png")}, timeout=10)
    assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["body", "image"]
