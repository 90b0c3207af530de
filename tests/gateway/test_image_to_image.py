"""Image-to-image at the gateway: the init image (base64) makes a request img2img; bad ones are 4xx."""

from __future__ import annotations

import base64
import io

from PIL import Image

from protocol.messages import steps_run


def png(size=(64, 64), color=(200, 40, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "PNG")
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_an_init_image_makes_the_job_img2img_with_its_bytes_and_strength(client, fake):
    data = png()
    for init in (b64(data), "data:image/png;base64," + b64(data)):
        response = client.post("/v1/jobs", json={"prompt": "a cat", "init_image": init, "strength": 0.5, "steps": 20})
        assert response.status_code == 202, response.get_json()
        params = fake.submitted[-1][0]
        assert (params.mode, params.strength, steps_run(params)) == ("img2img", 0.5, 10)
        assert fake.init_images[response.get_json()["id"]] == data
    plain = client.post("/v1/jobs", json={"prompt": "a cat"}).get_json()
    assert plain["params"]["mode"] == "txt2img" and fake.init_images[plain["id"]] == b""


def test_bad_init_images_and_strengths_are_client_errors_with_a_field(make_client, fake):
    client = make_client(max_upload_bytes=1000)
    cases = [({"init_image": "not base64!"}, 400, "init_image"),
             ({"init_image": b64(b"x" * 2000)}, 413, "init_image"),
             ({"strength": 0.5}, 400, "strength"),  # no image to apply it to
             ({"init_image": b64(png()), "strength": 1.5}, 400, "strength"),
             ({"init_image": b64(png()), "strength": 0.1, "steps": 5}, 400, "strength")]  # 5 x 0.1 runs no step
    for extra, status, field in cases:
        response = client.post("/generate", json={"prompt": "a cat", **extra})
        assert response.status_code == status, (extra, response.get_json())
        assert response.get_json()["field"] == field
    assert not fake.submitted


def test_mode_is_derived_never_sent(client):
    response = client.post("/v1/jobs", json={"prompt": "a cat", "mode": "img2img"})
    assert response.status_code == 202  # unknown fields are ignored, as everywhere
    assert response.get_json()["params"]["mode"] == "txt2img"
    schema = client.get("/openapi.json").get_json()["components"]["schemas"]["GenerateRequest"]["properties"]
    assert "init_image" in schema and "strength" in schema and "mode" not in schema


def test_a_multipart_form_carries_the_images_as_files_and_numbers_as_text(client, fake):
    data, mask = png(), png(color=(255, 255, 255))
    response = client.post("/v1/jobs", content_type="multipart/form-data", data={
        "prompt": "a cat", "steps": "20", "strength": "0.5", "seed": "7",
        "init_image": (io.BytesIO(data), "cat.png"), "mask": (io.BytesIO(mask), "mask.png")})
    assert response.status_code == 202, response.get_json()
    job = response.get_json()
    assert job["params"]["mode"] == "inpaint" and job["params"]["seed"] == 7 and job["params"]["strength"] == 0.5
    assert fake.init_images[job["id"]] == data and fake.masks[job["id"]] == (mask, "luminance")
    bad = client.post("/generate", content_type="multipart/form-data", data={"prompt": "a cat", "steps": "many"})
    assert bad.status_code == 400 and bad.get_json()["field"] == "steps"


def test_a_mask_without_an_init_image_is_refused(client, fake):
    response = client.post("/v1/jobs", json={"prompt": "a cat", "mask": b64(png())})
    assert response.status_code == 400 and response.get_json()["field"] == "mask"
