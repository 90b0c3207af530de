"""AUTOMATIC1111's ControlNet extension API, as its clients send it.

Units come in ``alwayson_scripts`` on txt2img and img2img, under ``controlnet`` (the extension's
documented spelling) or ``ControlNet`` (webuiapi's; any case), each with the extension's field names
and values (its resize and control modes by number or by words); a disabled unit, or one naming no
model ("None"), is left out, as the extension leaves it. In img2img a unit without an image takes the
init image; a unit's ``mask`` is where it acts (for the inpaint module, the part to fill). The
response's images end with each unit's detected map, as the extension's do (a unit with
``save_detected_map: false`` has none). The routes under ``/controlnet``: version, model_list,
module_list, control_types, settings and detect (images under ``controlnet_input_images``, or
webuiapi's ``controlnet_images``).
"""

from __future__ import annotations

import base64

from flask import Blueprint, jsonify, request

from gateway.errors import ApiError
from gateway.json_body import decode_object
from gateway.policy import starts_work, takes_images
from gateway.services import services
from gateway.waiting import generate_sync
from protocol.control import (BUILTIN_MODULES, CONTROL_MODE_NAMES, MODULES, RESIZE_MODE_NAMES,
                              RESIZE_MODE_NUMBERS, module_named, runnable)
from protocol.messages import MAX_CONTROL_THRESHOLD, MAX_CONTROLS, MAX_SIZE, ControlUnit

bp = Blueprint("a1111_controlnet", __name__, url_prefix="/controlnet")
API_VERSION = 2  # the extension's get_api_version()
DEFAULT_RES = 512  # the extension's processor_res when -1
# Each by the extension's words, its numbers, or our own names.
_MODES = {**{words.lower(): ours for ours, words in CONTROL_MODE_NAMES.items()}, "0": "balanced", "1": "prompt",
          "2": "control", **{ours: ours for ours in CONTROL_MODE_NAMES}}
_RESIZES = {**{words.lower(): ours for ours, words in RESIZE_MODE_NAMES.items()},
            "scale to fit (inner fit)": "crop", "inner fit (scale to fit)": "crop", "envelope (outer fit)": "fill",
            **{str(i): ours for i, ours in enumerate(RESIZE_MODE_NUMBERS)},
            **{ours: ours for ours in RESIZE_MODE_NAMES}}
_UNIT_HINT = ('Send alwayson_scripts {"controlnet": {"args": [{"image": "<base64>", "module": "canny", "model": '
              '"<a name from GET /controlnet/model_list>"}]}}.')


def _invalid(message: str, hint: str = _UNIT_HINT) -> ApiError:
    return ApiError(400, "invalid_params", message, hint, field="alwayson_scripts")


def units(alwayson) -> list[dict]:
    """The ControlNet units of a txt2img/img2img request's ``alwayson_scripts``, as ``controls`` takes them."""
    if alwayson is None:
        return []
    if not isinstance(alwayson, dict):
        raise _invalid("alwayson_scripts must be an object")
    script = next((value for key, value in alwayson.items() if key.lower() == "controlnet"), None)
    if script is None:
        return []
    args = script.get("args") if isinstance(script, dict) else None
    if not isinstance(args, list):
        raise _invalid("the ControlNet script's args must be a list of units")
    out = []
    for i, unit in enumerate(args):
        if not isinstance(unit, dict):
            raise _invalid(f"ControlNet unit {i} must be an object")
        model = unit.get("model")
        if unit.get("enabled", True) is False or model in (None, "", "None", "none"):
            continue
        out.append(_unit(i, unit))
    if len(out) > MAX_CONTROLS:
        raise _invalid(f"{len(out)} ControlNet units are enabled; at most {MAX_CONTROLS} run at once",
                       f"Enable at most {MAX_CONTROLS} units (GET /controlnet/settings).")
    return out


def _unit(i: int, unit: dict) -> dict:
    image = unit.get("image", unit.get("input_image"))
    mask = unit.get("mask")
    if isinstance(image, dict):  # the extension's {"image": ..., "mask": ...}
        image, mask = image.get("image"), image.get("mask", mask)
    if image is not None and not isinstance(image, str):
        raise _invalid(f"ControlNet unit {i}'s image must be base64 text")
    if mask is not None and not isinstance(mask, str):
        raise _invalid(f"ControlNet unit {i}'s mask must be base64 text")
    control_mode = unit.get("control_mode", 2 if unit.get("guessmode") else 0)  # guess mode: the older spelling
    return {"image": image or None, "mask": mask or None, "module": _text(i, unit, "module", "none"),
            "model": _text(i, unit, "model", ""),
            "weight": _number(i, unit, "weight", 1.0), "guidance_start": _number(i, unit, "guidance_start", 0.0),
            "guidance_end": _number(i, unit, "guidance_end", 1.0),
            "control_mode": _choice(i, "control_mode", control_mode, _MODES, CONTROL_MODE_NAMES),
            "resize_mode": _choice(i, "resize_mode", unit.get("resize_mode", 1), _RESIZES, RESIZE_MODE_NAMES),
            "processor_res": processor_res(_number(i, unit, "processor_res", -1)),
            "threshold_a": _threshold(_number(i, unit, "threshold_a", -1)),
            "threshold_b": _threshold(_number(i, unit, "threshold_b", -1)),
            "pixel_perfect": bool(unit.get("pixel_perfect", False)),
            # the extension appends each unit's detected map to the images unless the unit says not to
            "return_map": unit.get("save_detected_map", True) is not False}


def _text(i: int, unit: dict, key: str, default: str) -> str:
    value = unit.get(key, default)
    if not isinstance(value, str):
        raise _invalid(f"ControlNet unit {i}'s {key} must be text")
    return value.split(" [")[0] if key == "model" else value  # A1111's "name [hash]" title


def _number(i: int, unit: dict, key: str, default: float) -> float:
    value = unit.get(key, default)
    if value is None:
        return default
    try:
        return float(value)
    except (TypeError, ValueError):
        raise _invalid(f"ControlNet unit {i}'s {key} must be a number") from None


def _choice(i: int, key: str, value, names: dict[str, str], words: dict[str, str]) -> str:
    chosen = names.get(str(value).strip().lower())
    if chosen is None:
        raise _invalid(f"ControlNet unit {i}'s {key} {str(value)[:60]!r} is not one of {', '.join(words.values())}",
                       f"Use one of: {', '.join(words.values())} (or 0-{len(words) - 1}).")
    return chosen


def processor_res(value: float) -> int:
    """The extension's processor_res: -1 its default, the rest within its slider."""
    return DEFAULT_RES if value < 0 else int(min(max(value, 64), MAX_SIZE))


def _threshold(value: float) -> float:
    return -1.0 if value < 0 else min(value, MAX_CONTROL_THRESHOLD)


# --- the extension's routes -------------------------------------------------------------------


@bp.get("/version")
def version():
    return jsonify(version=API_VERSION)


@bp.get("/settings")
def settings():
    return jsonify(control_net_unit_count=MAX_CONTROLS)


@bp.get("/model_list")
def model_list():
    return jsonify(model_list=[c.name for c in services().model_list(fresh=True).controlnets])


def _sliders(name: str) -> list[dict]:
    module = MODULES[name]
    sliders = [{"name": "Preprocessor Resolution", "value": DEFAULT_RES, "min": 64, "max": MAX_SIZE}] \
        if module.resolution else []
    return sliders + [{"name": s.name, "value": s.value, "min": s.min, "max": s.max, "step": s.step}
                      for s in (module.a, module.b) if s is not None]


def _runnable() -> list[str]:
    """The preprocessors this server runs: the built-in ones and those whose annotator model it has."""
    return runnable(services().model_list(fresh=True).annotator_modules)


@bp.get("/module_list")
def module_list():
    """The preprocessors this server runs (those needing an annotator model it lacks are not among them)."""
    names = _runnable()
    return jsonify(module_list=names, module_detail={name: {"model_free": name in BUILTIN_MODULES,
                                                            "sliders": _sliders(name)} for name in names})


# A1111's control types and the modules each offers (those this server runs are listed).
_TYPES = {"Canny": ["canny"], "Depth": ["depth_midas", "depth_anything", "depth_anything_v2"],
          "Lineart": ["lineart_realistic", "lineart_coarse", "lineart_anime"],
          "SoftEdge": ["softedge_pidinet", "softedge_hed", "softedge_hedsafe", "softedge_pidisafe"],
          "Scribble": ["scribble_pidinet", "scribble_hed", "scribble_xdog", "threshold", "binary", "invert"],
          "MLSD": ["mlsd"], "OpenPose": ["openpose"], "NormalMap": ["normal_bae"],
          "Tile": ["tile_resample", "blur_gaussian"], "Inpaint": ["inpaint_only"], "Shuffle": ["shuffle"],
          "Recolor": ["color"]}


@bp.get("/control_types")
def control_types():
    models = [c.name for c in services().model_list(fresh=True).controlnets]
    runs = _runnable()

    def kind(modules: list[str], name: str) -> dict:
        modules = [m for m in modules if m in runs]
        matching = [m for m in models if name == "All" or name.lower() in m.lower()]
        return {"module_list": ["none", *modules] if "none" not in modules else modules,
                "model_list": ["None", *matching], "default_option": modules[0] if modules and name != "All"
                else "none", "default_model": matching[0] if matching and name != "All" else "None"}

    return jsonify(control_types={"All": kind(runs, "All"),
                                  **{name: kind(modules, name) for name, modules in _TYPES.items()}})


def _parse_detect():
    body = decode_object(request.get_data(cache=False), 'Send {"controlnet_module": "canny", '
                                                        '"controlnet_input_images": ["<base64>"]}.')
    images = body.get("controlnet_input_images", body.get("controlnet_images"))
    if not isinstance(images, list) or not images or not all(isinstance(i, str) for i in images):
        raise ApiError(400, "invalid_params", "No image selected",
                       "Send controlnet_input_images: a list of base64 images.", field="controlnet_input_images")
    module = body.get("controlnet_module", "none")
    if not isinstance(module, str) or module_named(module) is None:
        raise ApiError(400, "invalid_params", "Module not available",
                       "Use one of GET /controlnet/module_list.",
                       field="controlnet_module")
    fields = {}
    for key, default in (("controlnet_processor_res", -1.0), ("controlnet_threshold_a", -1.0),
                         ("controlnet_threshold_b", -1.0)):
        try:
            fields[key] = float(body.get(key, default) if body.get(key) is not None else default)
        except (TypeError, ValueError):
            raise ApiError(400, "invalid_params", f"{key} must be a number", "Send a number.", field=key) from None
    unit = ControlUnit(module=module, processor_res=processor_res(fields["controlnet_processor_res"]),
                       threshold_a=_threshold(fields["controlnet_threshold_a"]),
                       threshold_b=_threshold(fields["controlnet_threshold_b"]))
    validator = services().validator
    return [validator.detect(validator.decoded_upload(image, "controlnet_input_images"), unit) for image in images]


@bp.post("/detect")
@starts_work(_parse_detect)
@takes_images
def detect(generations):
    sv = services()
    out = []
    for generation in generations:
        _, images = generate_sync(sv, generation)
        out += [base64.b64encode(data).decode("ascii") for _, data in images]
    return jsonify(images=out, info="Success")
