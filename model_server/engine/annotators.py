"""Runs the preprocessors that need an annotator model (protocol.control.ANNOTATOR_MODULES), on the weights
annotator_files.AnnotatorFiles found: line art, HED and PiDiNet soft edges and M-LSD lines with the
networks of ``controlnet_aux`` (the annotator library diffusers' ControlNet documentation uses, ported from
A1111's extension, so a map is the one those ControlNets were trained on), OpenPose's body model from the
same library, NormalBAE's normals, depth with transformers' depth-estimation models (Depth Anything,
DPT-Hybrid MiDaS).

Weights are read with ``torch.load(weights_only=True)``: a hostile ``.pth`` cannot run code. One annotator
stays loaded, the last one used (HED is 56 MB, Depth Anything V2 Small 100 MB, OpenPose's body 200 MB,
NormalBAE 290 MB, DPT-Hybrid 490 MB); another takes its place. Used by the worker thread only, one job at a time.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
import sys
import types
from pathlib import Path

import numpy as np

from model_server.control.annotator_files import ANNOTATORS, AnnotatorFiles
from model_server.errors import load_error, redact_paths
from protocol.control import ANNOTATOR_MODULES

log = logging.getLogger("model_server.annotators")


def aux(name: str):
    """controlnet_aux's submodule ``name``, imported without the package's ``__init__``: that imports every
    annotator at once, with timm and torchvision (PyPI's torchvision does not load beside the CPU torch we
    pin), while the ones run here need neither. OpenPose's and NormalBAE's own ``__init__`` are skipped the
    same way (OpenPose's face and hand models and NormalBAE's input transform need torchvision or
    scikit-image; their networks do not). The package is installed without its dependencies
    (requirements/model-nodeps.txt)."""
    _bare("controlnet_aux")
    if name.startswith(("open_pose.", "normalbae.")):
        _bare(f"controlnet_aux.{name.split('.')[0]}")
    return importlib.import_module(f"controlnet_aux.{name}")


def _bare(package: str) -> None:
    """``package`` registered as a namespace for its submodules, its ``__init__`` not run."""
    if package in sys.modules:
        return
    spec = importlib.util.find_spec(package)
    if spec is None:
        raise ModuleNotFoundError(f"{package} is not installed (requirements/model-nodeps.txt)")
    module = types.ModuleType(package)
    module.__path__, module.__spec__ = list(spec.submodule_search_locations), spec
    sys.modules[package] = module


def _state(path: Path) -> dict:
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in ("state_dict", "model"):  # PiDiNet's and NormalBAE's files wrap their tensors
        state = state.get(wrapper, state)
    return {key.removeprefix("module."): value for key, value in state.items()}  # saved from DataParallel


def _net(net, path: Path):
    net.load_state_dict(_state(path))
    return net.float().eval()


def _at_side(detector, **options):
    """A controlnet_aux detector run at the pixels' own side (they come scaled to the unit's processor_res)."""
    def run(pixels: np.ndarray) -> np.ndarray:
        side = min(pixels.shape[:2])
        return detector(pixels, detect_resolution=side, image_resolution=side, output_type="np", **options)
    return run


def _load(annotator: str, path: Path):
    """``annotator`` loaded from ``path``, as ``run(pixels, module, a, b)``: ``module``'s map of the RGB pixels,
    ``a``/``b`` its thresholds (see ``Annotators.run``)."""
    if annotator in ("lineart", "lineart_coarse"):
        lineart = aux("lineart")
        net = _net(lineart.Generator(3, 1, 3), path)
        draw = _at_side(lineart.LineartDetector(net, net), coarse=annotator == "lineart_coarse")
        return lambda pixels, module, a, b: draw(pixels)
    if annotator == "lineart_anime":
        import torch.nn as nn

        anime = aux("lineart_anime")
        norm = functools.partial(nn.InstanceNorm2d, affine=False, track_running_stats=False)
        draw = _at_side(anime.LineartAnimeDetector(_net(anime.UnetGenerator(3, 1, 8, 64, norm_layer=norm,
                                                                            use_dropout=False), path)))
        return lambda pixels, module, a, b: draw(pixels)
    if annotator in ("hed", "pidinet"):
        detector = (aux("hed").HEDdetector(_net(aux("hed").ControlNetHED_Apache2(), path)) if annotator == "hed"
                    else aux("pidi").PidiNetDetector(_net(aux("pidi.model").pidinet(), path)))
        return lambda pixels, module, a, b: _at_side(detector, safe=module.endswith("safe"),
                                                     scribble=module.startswith("scribble"))(pixels)
    if annotator == "mlsd":
        detector = aux("mlsd").MLSDdetector(_net(aux("mlsd").MobileV2_MLSD_Large(), path))
        return lambda pixels, module, a, b: _at_side(detector, thr_v=a, thr_d=b)(pixels)
    if annotator == "openpose":
        pose = _Pose(path)
        return lambda pixels, module, a, b: pose(pixels)
    if annotator == "normal_bae":
        net = _net(normal_bae_network(), path)
        return lambda pixels, module, a, b: _normals(net, pixels)
    if annotator in ("depth_anything", "midas"):
        import torch
        from transformers import AutoImageProcessor, AutoModelForDepthEstimation

        model = AutoModelForDepthEstimation.from_pretrained(path, dtype=torch.float32, local_files_only=True).eval()
        processor = AutoImageProcessor.from_pretrained(path, local_files_only=True)
        return lambda pixels, module, a, b: _depth(model, processor, pixels)
    raise ValueError(f"no loader for the annotator {annotator!r}")


def normal_bae_network():
    """NormalBAE's network as its published scannet.pt was trained (BN decoder, the client mode that infers)."""
    import contextlib
    import io

    args = types.SimpleNamespace(mode="client", architecture="BN", pretrained="scannet", sampling_ratio=0.4,
                                 importance_ratio=0.7)
    with contextlib.redirect_stdout(io.StringIO()):  # its encoder prints its progress
        return aux("normalbae.nets.NNET").NNET(args)


def _normals(net, pixels: np.ndarray) -> np.ndarray:
    """Surface normals as the normal ControlNet reads them: x, y, z from -1..1 to 0..255 in R, G, B."""
    import torch

    import cv2

    h, w = pixels.shape[:2]
    sized = cv2.resize(pixels, (max(64, round(w / 64) * 64), max(64, round(h / 64) * 64)),
                       interpolation=cv2.INTER_AREA)  # its decoder's skips meet at multiples of 64, as A1111 sizes it
    with torch.inference_mode():
        x = torch.from_numpy(np.ascontiguousarray(sized)).float().div(255).permute(2, 0, 1)[None]
        mean, std = (torch.tensor(v)[:, None, None] for v in ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]))
        normal = net((x - mean) / std)[0][-1][:, :3]  # as ImageNet normalised it
        normal = torch.nn.functional.interpolate(normal, size=(h, w), mode="bilinear", align_corners=False)
        return ((normal[0].permute(1, 2, 0).numpy() + 1) * 127.5).clip(0, 255).astype(np.uint8)


def _depth(model, processor, pixels: np.ndarray) -> np.ndarray:
    """Relative depth as A1111's depth maps show it: near bright, far dark, stretched to 0..255."""
    import torch

    with torch.inference_mode():
        predicted = model(**processor(images=pixels, return_tensors="pt")).predicted_depth
        depth = torch.nn.functional.interpolate(predicted[:, None].float(), size=pixels.shape[:2], mode="bicubic",
                                                align_corners=False)[0, 0].numpy()
    low, high = float(depth.min()), float(depth.max())
    return ((depth - low) / max(high - low, 1e-6) * 255).clip(0, 255).astype(np.uint8)


class _Pose:
    """OpenPose's body model: the people's keypoints drawn as its ControlNet was trained on (limbs as coloured
    sticks on black; no hands or face)."""

    def __init__(self, path: Path):
        self._util = aux("open_pose.util")  # first: it and body.py import each other, util's side works
        body = aux("open_pose.body")
        net = body.bodypose_model()
        # the published file's names lack the model's first part (model0.conv1_1 is conv1_1): its own transfer maps
        net.load_state_dict(self._util.transfer(net, _state(path)))
        self._estimate = body.Body.__new__(body.Body)  # Body() would load the file again, its own way
        self._estimate.model = net.float().eval()
        self._keypoint = body.Keypoint

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        import torch

        h, w = pixels.shape[:2]
        with torch.inference_mode():
            candidate, subset = self._estimate(np.ascontiguousarray(pixels[:, :, ::-1]))  # it reads BGR
        canvas = np.zeros((h, w, 3), np.uint8)
        for person in self._estimate.format_body_result(candidate, subset):
            points = [None if k is None else self._keypoint(x=k.x / w, y=k.y / h) for k in person.keypoints]
            canvas = self._util.draw_bodypose(canvas, points)
        return canvas


class Annotators:
    """The annotators of ``files``, loaded on first use, one at a time."""

    def __init__(self, files: AnnotatorFiles):
        self.files = files
        self._loaded: tuple[str, Path, object] | None = None

    def _get(self, annotator: str, path: Path):
        if self._loaded is None or self._loaded[:2] != (annotator, path):
            self._loaded = None  # the last one's memory goes before the next loads
            log.info("loading the annotator %s from %s", annotator, path)
            try:
                self._loaded = (annotator, path, _load(annotator, path))
            except Exception as exc:  # a broken file fails the job that needs it, said plainly
                raise load_error(f"could not load the annotator {annotator} ({path.name}): "
                                 f"{redact_paths(f'{type(exc).__name__}: {str(exc)[:300]}')}",
                                 f"Replace {path.name} in ANNOTATOR_DIR with the file as {ANNOTATORS[annotator].repo} "
                                 "publishes it (python -m model_server fetch --annotators).") from None
        return self._loaded[2]

    def run(self, module: str, pixels: np.ndarray, a: float, b: float) -> np.ndarray:
        """``module``'s map of ``pixels`` (RGB, already at the side it works at): same size, 1 or 3 channels.
        Raises PipelineLoadError when its annotator cannot load or went from the folder since the submit."""
        annotator = ANNOTATOR_MODULES[module].annotator
        path = self.files.path(module)
        if path is None:
            raise load_error(f"the annotator {annotator} is no longer in ANNOTATOR_DIR",
                             "Put it back (GET /v1/controlnets lists the preprocessors this server can run).")
        return self._get(annotator, path)(pixels, module, a, b)
