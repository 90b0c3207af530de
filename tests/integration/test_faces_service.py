"""Face restoration on the real service: generations and upscale jobs through the native API and A1111's
(``webuiapi``), with a tiny random-weight RestoreFormer and facexlib's detector layout (one that finds one
centred face in any image) in FACE_RESTORER_DIR, beside a file that is no model. A server without a
restorer is tested in test_finishing_service.py (its refusals) and the A1111 smoke set (its notes)."""

from __future__ import annotations

import io
import json
from urllib.parse import urlparse

import numpy as np
import pytest
import requests
import webuiapi
from PIL import Image

from tests.integration.conftest import start_stack, stop_stack
from tests.integration.test_finishing_service import b64, finished, image_of

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(log_dir, tiny_model_dir, tmp_path_factory):
    from model_server.engine.tiny_faces import write_tiny_faces

    folder = tmp_path_factory.mktemp("faces")
    write_tiny_faces(folder)
    (folder / "unreadable.pth").write_bytes(b"these are notes, not a model\n" * 10)
    stack = start_stack(log_dir, tiny_model_dir, {"GATEWAY_WORKERS": 1}, FACE_RESTORER_DIR=folder)
    yield stack
    stop_stack(stack)
    assert "Traceback" not in stack.gateway.log() and "Traceback" not in stack.model_server.log()


def portrait(size=(128, 128)) -> Image.Image:
    y, x = np.mgrid[0:size[1], 0:size[0]]
    return Image.fromarray(np.stack([x * 255 // size[0], y * 255 // size[1], np.full_like(x, 90)], -1).astype(np.uint8))


def png_of(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def generate(stack, **body) -> tuple[dict, Image.Image]:
    job, _ = finished(stack, requests.post(stack.url + "/v1/jobs", json={"prompt": "a portrait", "steps": 2,
                                                                        "seed": 5, **body}, timeout=30))
    assert job["state"] == "succeeded", job
    return job, image_of(stack, job)


def test_the_restorers_and_the_detector_are_listed_natively_and_for_a1111(stack):
    listed = requests.get(stack.url + "/v1/face-restorers", timeout=10).json()
    assert [f["name"] for f in listed["face_restorers"]] == ["tiny-restoreformer", "unreadable"]
    assert listed["detector"] == "detection_mobilenet0.25_Final.pth"
    a1111 = requests.get(stack.url + "/sdapi/v1/face-restorers", timeout=10).json()
    assert a1111 == [{"name": "tiny-restoreformer", "cmd_dir": None}, {"name": "unreadable", "cmd_dir": None}]


def test_a_generation_restores_its_face_and_changes_nothing_else(stack):
    _, plain = generate(stack)
    job, restored = generate(stack, face_restoration={"model": "tiny-restoreformer"})
    assert "faces tiny-restoreformer (RestoreFormer" in job["engine"]
    a, b = np.array(plain), np.array(restored)
    changed = np.nonzero((a != b).any(2))
    assert changed[0].size > 0  # the detector's one face, in the middle
    assert (a[:8] == b[:8]).all() and (a[:, :8] == b[:, :8]).all()  # the edges are the generation's
    assert "Face restoration: tiny-restoreformer" in restored.info["parameters"]


def test_at_visibility_zero_the_image_is_the_generations(stack):
    _, plain = generate(stack)
    _, invisible = generate(stack, face_restoration={"model": "tiny-restoreformer", "visibility": 0})
    assert (np.array(plain) == np.array(invisible)).all()


def test_an_upscale_job_restores_faces_after_upscaling_or_alone(stack):
    source = portrait()
    both, _ = finished(stack, requests.post(stack.url + "/v1/upscale", json={
        "image": b64(png_of(source)), "upscaler": "Lanczos", "scale": 2,
        "face_restoration": {"model": "tiny-restoreformer"}}, timeout=30))
    assert both["state"] == "succeeded", both
    assert image_of(stack, both).size == (256, 256)
    form = requests.post(stack.url + "/v1/upscale", files={"image": ("p.png", png_of(source), "image/png")},
                         data={"upscaler": "None", "face_restoration": '{"visibility": 0.5}'}, timeout=30)
    alone, _ = finished(stack, form)
    assert alone["state"] == "succeeded", alone
    result = image_of(stack, alone)
    assert result.size == (128, 128) and (np.array(result.convert("RGB")) != np.array(source)).any()
    assert "Face restoration visibility: 0.5" in result.info["parameters"]


@pytest.mark.parametrize("body, words", [
    ({"face_restoration": {"model": "CodeFormer"}}, "unknown face restorer"),
    ({"face_restoration": {"visibility": 2}}, "face_restoration"),
    ({"face_restoration": "yes"}, "face_restoration"),
])
def test_a_bad_face_restoration_is_a_clear_400(stack, body, words):
    response = requests.post(stack.url + "/v1/jobs", json={"prompt": "a portrait", **body}, timeout=10)
    assert response.status_code == 400, response.text
    assert words in response.text and response.json()["hint"]


def test_a_file_that_is_no_model_fails_its_job_with_a_reason_and_the_server_goes_on(stack):
    job, _ = finished(stack, requests.post(stack.url + "/v1/jobs", json={
        "prompt": "a portrait", "steps": 2, "face_restoration": {"model": "unreadable"}}, timeout=30))
    assert job["state"] == "failed" and "unreadable.pth" in job["error"]["message"] and job["error"]["hint"]
    job, _ = generate(stack, face_restoration={})  # none named: the first listed
    assert "faces tiny-restoreformer" in job["engine"]


@pytest.fixture
def api(stack):
    url = urlparse(stack.url)
    return webuiapi.WebUIApi(host=url.hostname, port=url.port)


def test_webuiapi_restore_faces_restores_them_and_says_by_which(api):
    result = api.txt2img(prompt="a portrait", steps=2, width=64, height=64, seed=5, restore_faces=True,
                         override_settings={"face_restoration_model": "tiny"})
    assert result.info["restore_faces"] is True and "restore_faces" not in result.info["not_applied"]
    assert "Face restoration: tiny-restoreformer" in result.info["infotexts"][0]
    plain = api.txt2img(prompt="a portrait", steps=2, width=64, height=64, seed=5)
    assert plain.info["restore_faces"] is False
    assert (np.array(plain.image) != np.array(result.image)).any()


def test_webuiapi_extras_gfpgan_visibility_restores_the_faces_and_says_by_which(api):
    source = portrait()
    result = api.extra_single_image(source, upscaler_1="None", gfpgan_visibility=1)
    assert result.image.size == (128, 128) and (np.array(result.image) != np.array(source)).any()
    assert "GFPGAN is not on this server; tiny-restoreformer restored the faces" in result.info


def test_a1111s_default_restorer_codeformer_is_said_to_be_another(stack):
    body = {"prompt": "a portrait", "steps": 2, "width": 64, "height": 64, "restore_faces": True}
    response = requests.post(stack.url + "/sdapi/v1/txt2img", json=body, timeout=60)
    assert response.status_code == 200, response.text
    notes = json.loads(response.json()["info"])["not_applied"]
    assert notes["restore_faces"] == "CodeFormer is not on this server; tiny-restoreformer restored the faces"


@pytest.mark.parametrize("settings", [{"face_restoration_model": 7}, {"face_restoration": "yes please"}])
def test_a1111_face_settings_of_the_wrong_type_are_a_clear_422(stack, settings):
    body = {"prompt": "a portrait", "steps": 2, "width": 64, "height": 64, "override_settings": settings}
    response = requests.post(stack.url + "/sdapi/v1/txt2img", json=body, timeout=60)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["body", next(iter(settings))]
