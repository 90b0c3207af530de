"""Control units at the gateway: the native ``controls`` field (each unit's image split off to travel beside
the params), A1111's ``alwayson_scripts`` units in the extension's words and numbers, and what is refused
before anything reaches a model server."""

from __future__ import annotations

import base64

import pytest

from gateway.a1111_controlnet import units
from gateway.errors import ApiError

IMAGE = base64.b64encode(b"\x89PNG fake bytes").decode()


def test_native_units_travel_without_their_images_which_go_beside_them(client, fake):
    body = {"prompt": "a cat", "controls": [{"image": IMAGE, "module": "canny", "model": "c15", "weight": 0.5},
                                            {"image": IMAGE, "module": "none", "model": "c15"}]}
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 202, response.json
    params, _, _ = fake.submitted[-1]
    assert [(u.module, u.weight) for u in params.controls] == [("canny", 0.5), ("none", 1.0)]
    assert fake.control_images[response.json["id"]] == [base64.b64decode(IMAGE)] * 2
    assert fake.control_masks[response.json["id"]] == []  # no unit has a mask: none travel
    body["controls"][1]["mask"] = IMAGE
    masked = client.post("/v1/jobs", json=body)
    assert fake.control_masks[masked.json["id"]] == [b"", base64.b64decode(IMAGE)]


def test_an_img2img_unit_may_leave_its_image_to_the_init_image(client, fake):
    response = client.post("/v1/jobs", json={"prompt": "a cat", "init_image": IMAGE,
                                             "controls": [{"module": "canny", "model": "c15"}]})
    assert response.status_code == 202, response.json
    assert fake.control_images[response.json["id"]] == [b""]


@pytest.mark.parametrize("controls, fragment", [
    ([{"module": "canny", "model": "c15"}], "has no image"),
    ([{"image": IMAGE, "model": "c15", "weight": 2.5}], "controls"),
    ([{"image": IMAGE, "model": "c15"}] * 4, "length <= 3"),
    ([{"image": IMAGE, "model": "c15", "processor_res": 8}], "controls"),
    ({"image": IMAGE}, "controls"),
])
def test_units_out_of_bounds_are_400s_naming_the_field(client, controls, fragment):
    response = client.post("/v1/jobs", json={"prompt": "a cat", "controls": controls})
    assert response.status_code == 400
    assert fragment in response.json["error"] and response.json["field"] == "controls"


def test_a1111_units_in_the_extensions_words_and_numbers_become_units():
    args = [{"image": IMAGE, "module": "canny", "model": "c15 [d14c016b]", "weight": "0.7", "resize_mode": 2,
             "control_mode": "ControlNet is more important", "processor_res": -1, "threshold_a": 50,
             "threshold_b": 5000, "pixel_perfect": True, "mask": IMAGE},
            {"image": {"image": IMAGE}, "model": "c15", "resize_mode": "Just Resize", "control_mode": 1},
            {"image": IMAGE, "model": "c15", "enabled": False},
            {"image": IMAGE, "model": "None"}]
    out = units({"ControlNet": {"args": args}})
    assert len(out) == 2
    first, second = out
    assert (first["model"], first["weight"], first["resize_mode"], first["control_mode"]) == (
        "c15", 0.7, "fill", "control")
    assert (first["processor_res"], first["threshold_a"], first["threshold_b"]) == (512, 50.0, 1024.0)
    assert (second["image"], second["resize_mode"], second["control_mode"], second["module"]) == (
        IMAGE, "stretch", "prompt", "none")
    assert (first["mask"], second["mask"]) == (IMAGE, None)  # the unit's own mask travels with it
    assert units({"controlnet": {"args": [{"model": "c15", "guessmode": True}]}})[0]["control_mode"] == "control"
    assert units(None) == [] and units({"other script": {"args": [1]}}) == []


@pytest.mark.parametrize("scripts", [[], {"controlnet": []}, {"controlnet": {"args": [1]}},
                                     {"controlnet": {"args": [{"model": "c15", "resize_mode": 7}]}},
                                     {"controlnet": {"args": [{"model": "c15"}] * 4}},
                                     {"controlnet": {"args": [{"model": "c15", "mask": 5}]}}])
def test_a1111_units_that_make_no_sense_are_refused(scripts):
    with pytest.raises(ApiError) as info:
        units(scripts)
    assert info.value.status == 400 and info.value.field == "alwayson_scripts"


def test_a1111_txt2img_sends_its_units_on(client, fake):
    body = {"prompt": "a cat", "steps": 2, "alwayson_scripts": {"controlnet": {"args": [
        {"input_image": IMAGE, "module": "canny", "model": "c15"}]}}}
    response = client.post("/sdapi/v1/txt2img", json=body)
    params, _, _ = fake.submitted[-1]
    assert [u.model for u in params.controls] == ["c15"], response.json
