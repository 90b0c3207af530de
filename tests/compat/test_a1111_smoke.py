"""AUTOMATIC1111's own API smoke set, sent as A1111's clients send it: every request answers 200.

A1111 checks its API with a small set of requests (txt2img, img2img, options and listings), each
expected to answer 200; clients mix booleans and integers as its pydantic models coerce them. The
payloads here are of that shape, against the real service. What a request asks for that this
server does not do (face restoration with no restorer configured, a script) is said in
``info.not_applied``, never silently dropped. The hires fix is done (the image at twice the size); the
upscaler routes are tested in tests/integration/test_finishing_service.py.
"""

from __future__ import annotations

import base64
import io
import json
import time

import numpy as np
import pytest
import requests
from PIL import Image

pytestmark = pytest.mark.slow


def _b64_png(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _txt2img() -> dict:
    return {"batch_size": 1, "cfg_scale": 7, "denoising_strength": 0, "enable_hr": False, "eta": 0,
            "firstphase_height": 0, "firstphase_width": 0, "height": 64, "n_iter": 1, "negative_prompt": "",
            "prompt": "example prompt", "restore_faces": False, "s_churn": 0, "s_noise": 1, "s_tmax": 0, "s_tmin": 0,
            "sampler_index": "Euler a", "seed": -1, "seed_resize_from_h": -1, "seed_resize_from_w": -1, "steps": 3,
            "styles": [], "subseed": -1, "subseed_strength": 0, "tiling": False, "width": 64}


def _img2img() -> dict:
    gradient = Image.fromarray(np.tile(np.arange(64, dtype=np.uint8)[None, :, None] * 4, (64, 1, 3)))
    return {**{k: v for k, v in _txt2img().items() if k not in ("enable_hr", "firstphase_height",
                                                                   "firstphase_width")},
            "denoising_strength": 0.75, "include_init_images": False, "init_images": [_b64_png(gradient)],
            "inpaint_full_res": False, "inpaint_full_res_padding": 0, "inpainting_fill": 0,
            "inpainting_mask_invert": False, "mask": None, "mask_blur": 4, "override_settings": {}, "resize_mode": 0}


def _mask() -> str:
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))  # white: repaint the middle
    return _b64_png(mask)


TXT2IMG = {
    "simple": {}, "negative prompt": {"negative_prompt": "example negative prompt"},
    "complex prompt": {"prompt": "((emphasis)), (emphasis1:1.1), [to:1], [from::2], [from:to:0.3], [alt|alt1]"},
    "not square": {"height": 128}, "hires fix": {"enable_hr": True}, "tiling": {"tiling": True},
    "restore faces": {"restore_faces": True}, "PLMS": {"sampler_index": "PLMS"}, "DDIM": {"sampler_index": "DDIM"},
    "UniPC": {"sampler_index": "UniPC"}, "two batches": {"n_iter": 2}, "batch of two": {"batch_size": 2},
}


@pytest.mark.parametrize("change", TXT2IMG.values(), ids=TXT2IMG.keys())
def test_a1111s_txt2img_smoke_requests_answer_200(stack, change):
    response = requests.post(stack.url + "/sdapi/v1/txt2img", json={**_txt2img(), **change}, timeout=120)
    assert response.status_code == 200, response.text[:500]
    body = response.json()
    info = json.loads(body["info"])
    assert len(body["images"]) == (change.get("n_iter", 1) * change.get("batch_size", 1))
    size = Image.open(io.BytesIO(base64.b64decode(body["images"][0]))).size
    assert size == ((128, 128) if change.get("enable_hr") else (64, change.get("height", 64)))  # hr_scale 2
    assert ("restore_faces" in info["not_applied"]) == bool(change.get("restore_faces")), info["not_applied"]
    assert "enable_hr" not in info["not_applied"]
    assert info["tiling"] == bool(change.get("tiling"))
    if change.get("tiling"):
        assert "Tiling: True" in info["infotexts"][0]


IMG2IMG = {
    "simple": {}, "inpainting": {"mask": "MASK"}, "inverted mask": {"mask": "MASK", "inpainting_mask_invert": True},
    "sd upscale script": {"script_name": "sd upscale", "script_args": ["", 8, "Lanczos", 2.0]},
    "crop and resize": {"resize_mode": 1}, "resize and fill": {"resize_mode": 2, "mask": "MASK"},
    "latent resize": {"resize_mode": 3},
}


@pytest.mark.parametrize("change", IMG2IMG.values(), ids=IMG2IMG.keys())
def test_a1111s_img2img_smoke_requests_answer_200(stack, change):
    payload = {**_img2img(), **change}
    if payload["mask"] == "MASK":
        payload["mask"] = _mask()
    response = requests.post(stack.url + "/sdapi/v1/img2img", json=payload, timeout=120)
    assert response.status_code == 200, response.text[:500]
    info = json.loads(response.json()["info"])
    assert ("script_name" in info["not_applied"]) == ("script_name" in change)
    assert ("resize_mode" in info["not_applied"]) == (change.get("resize_mode") == 3)


def test_an_inverted_mask_repaints_what_the_plain_one_keeps(stack):
    base = {**_img2img(), "seed": 3, "mask": _mask(), "mask_blur": 0}
    images = []
    for invert in (0, 1):
        response = requests.post(stack.url + "/sdapi/v1/img2img", json={**base, "inpainting_mask_invert": invert},
                                 timeout=120)
        images.append(np.asarray(Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0]))), dtype=float))
    original = np.asarray(Image.open(io.BytesIO(base64.b64decode(base["init_images"][0]))).convert("RGB"), dtype=float)
    middle, corner = (slice(20, 44), slice(20, 44)), (slice(0, 12), slice(0, 12))
    # Kept parts are the original pixels: the plain mask keeps the corners, the inverted one the middle.
    plain, inverted = images
    assert np.array_equal(plain[corner], original[corner]) and not np.array_equal(plain[middle], original[middle])
    assert np.array_equal(inverted[middle], original[middle])
    assert not np.array_equal(inverted[corner], original[corner])


def test_an_unknown_script_is_a1111s_422(stack):
    response = requests.post(stack.url + "/sdapi/v1/txt2img", json={**_txt2img(), "script_name": "no such"},
                             timeout=30)
    assert response.status_code == 422


def test_an_option_written_reads_back_for_that_client_only(stack):
    url = stack.url + "/sdapi/v1/options"
    before = requests.get(url, timeout=10).json()
    for key in ("send_seed", "CLIP_stop_at_last_layers", "sd_vae", "samples_format", "sd_model_checkpoint"):
        assert key in before
    assert requests.post(url, json={"send_seed": not before["send_seed"]}, timeout=10).status_code == 200
    assert requests.get(url, timeout=10).json()["send_seed"] == (not before["send_seed"])
    assert requests.post(url, json={"send_seed": before["send_seed"]}, timeout=10).status_code == 200
    bad = requests.post(url, json={"jpeg_quality": "high"}, timeout=10)
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "jpeg_quality"]


def test_samples_format_is_honoured_on_the_clients_later_images(stack):
    url = stack.url + "/sdapi/v1/options"
    assert requests.post(url, json={"samples_format": "webp", "jpeg_quality": 60}, timeout=10).status_code == 200
    try:
        response = requests.post(stack.url + "/sdapi/v1/txt2img", json=_txt2img(), timeout=120)
        assert Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0]))).format == "WEBP"
    finally:
        requests.post(url, json={"samples_format": "png", "jpeg_quality": 80}, timeout=10)


@pytest.mark.parametrize("route", ["cmd-flags", "samplers", "sd-models", "hypernetworks", "face-restorers",
                                   "realesrgan-models", "prompt-styles", "embeddings"])
def test_a1111s_listing_routes_answer_200_in_its_shape(stack, route):
    response = requests.get(f"{stack.url}/sdapi/v1/{route}", timeout=10)
    assert response.status_code == 200
    body = response.json()
    assert isinstance(body, dict if route in ("cmd-flags", "embeddings") else list)
    if route == "cmd-flags":  # never a server's folder
        assert all(value is None for key, value in body.items() if key.endswith("_dir"))


def test_a_task_given_an_id_is_followed_by_internal_progress_with_live_previews(stack):
    import threading

    def progress(**body):
        response = requests.post(stack.url + "/internal/progress", json=body, timeout=10)
        assert response.status_code == 200, response.text
        return response.json()

    assert progress(id_task="task(never-given)") == {
        "active": False, "queued": False, "completed": False, "progress": None, "eta": None, "live_preview": None,
        "id_live_preview": -1, "textinfo": "Waiting..."}
    # Long enough to be seen running (a preview every step), short enough not to hold the suite up.
    body = {**_txt2img(), "prompt": "a slow lighthouse", "steps": 40, "width": 256, "height": 256,
            "batch_size": 2, "force_task_id": "task(lighthouse-1)"}
    answer = {}
    worker = threading.Thread(target=lambda: answer.update(
        r=requests.post(stack.url + "/sdapi/v1/txt2img", json=body, timeout=300)))
    worker.start()
    seen = []
    while worker.is_alive():
        seen.append(progress(id_task="task(lighthouse-1)", id_live_preview=-1, live_preview=True))
        time.sleep(0.02)  # polling flat out would take the CPU the job runs on
    worker.join()
    assert answer["r"].status_code == 200
    running = [s for s in seen if s["active"]]
    assert running, seen[:3]
    assert all(0 <= s["progress"] <= 1 for s in running)
    previews = [s for s in running if s["live_preview"]]
    assert previews and previews[0]["live_preview"].startswith("data:image/jpeg;base64,")
    assert previews[0]["id_live_preview"] > 0
    same = progress(id_task="task(lighthouse-1)", id_live_preview=previews[-1]["id_live_preview"])
    assert same["completed"] and same["progress"] == 1.0 and same["live_preview"] is None


def test_a_bad_task_id_is_a1111s_422(stack):
    response = requests.post(stack.url + "/sdapi/v1/txt2img", json={**_txt2img(), "force_task_id": "x" * 500},
                             timeout=30)
    assert response.status_code == 422
