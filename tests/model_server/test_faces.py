"""Face restoration: the folder's restorers and detector, the checks a job passes, and the engine's
geometry (align, restore, paste back), detector and restorers on tiny random-weight files in the real
layouts (a RestoreFormer spandrel detects; facexlib's RetinaFace detector), including hostile files."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from model_server.engine.face_detector import Face, decode, detect, load_detector, nms, priors
from model_server.engine.face_restore import (CROP, MAX_FACES, TEMPLATE, FaceModels, faces_to_restore,
                                              restore_face_in, similarity)
from model_server.engine.tiny_faces import DETECTOR, RESTORER, write_tiny_faces
from model_server.errors import Rejection
from model_server.fake_pipeline import FakeFaceModels
from model_server.finishing.faces import FaceRestorers
from model_server.pipeline import JobCancelledError, PipelineLoadError
from protocol.infotext import infotext
from protocol.messages import FaceRestoration, GenerationParams, StopMode


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_faces(tmp_path_factory.mktemp("faces"))


@pytest.fixture(scope="module")
def faceless(tmp_path_factory):
    return write_tiny_faces(tmp_path_factory.mktemp("no-faces"), face=False)


def _image(width=512, height=512) -> Image.Image:
    y, x = np.mgrid[0:height, 0:width]
    return Image.fromarray(np.stack([x * 255 // width, y * 255 // height, (x + y) * 255 // (width + height)],
                                    -1).astype(np.uint8))


def _face_at(cx, cy, scale, angle=0.0) -> Face:
    rotate = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    points = (TEMPLATE.numpy() - CROP / 2) * scale @ rotate.T + [cx, cy]
    half = CROP * scale * 0.4
    return Face((cx - half, cy - half, cx + half, cy + half), 0.99, tuple(map(tuple, points.tolist())))


# --- the folder (torch-free) ---------------------------------------------------------------------------


def test_the_folder_lists_restorers_and_finds_the_detector_as_a1111_keeps_them(tmp_path):
    for name in ("GFPGANv1.4.pth", "RestoreFormer.safetensors", "detection_Resnet50_Final.pth",
                 "detection_mobilenet0.25_Final.pth", "parsing_parsenet.pth", "codeformer.ckpt", ".hidden.pth"):
        (tmp_path / name).write_bytes(b"12345678")
    faces = FaceRestorers(str(tmp_path), FakeFaceModels)
    assert [e.name for e in faces.entries()] == ["GFPGANv1.4", "RestoreFormer"]  # never helpers, code or hidden
    assert faces.detector().name == "detection_Resnet50_Final.pth"  # the better detector when both are there
    assert faces.resolve("") == "GFPGANv1.4" and faces.resolve("RestoreFormer") == "RestoreFormer"
    with pytest.raises(Rejection, match="unknown face restorer") as unknown:
        faces.resolve("CodeFormer")
    assert "GFPGANv1.4" in unknown.value.error.hint


def test_without_a_model_or_a_detector_the_refusal_names_the_setting(tmp_path):
    with pytest.raises(Rejection, match="FACE_RESTORER_DIR has none") as none:
        FaceRestorers("", FakeFaceModels).resolve("")
    assert "FACE_RESTORER_DIR" in none.value.error.hint and none.value.error.field == "face_restoration"
    (tmp_path / "GFPGANv1.4.pth").write_bytes(b"12345678")
    with pytest.raises(Rejection, match="needs a face detector"):
        FaceRestorers(str(tmp_path), FakeFaceModels).resolve("")


def test_the_infotext_names_the_restorer_and_a_partial_visibility():
    params = GenerationParams(prompt="a portrait", seed=1, face_restoration=FaceRestoration(model="GFPGANv1.4"))
    assert "Face restoration: GFPGANv1.4" in infotext(params, 1, "m")
    half = GenerationParams(prompt="x", seed=1, mode="upscale", upscale=2,
                            face_restoration=FaceRestoration(model="GFPGANv1.4", visibility=0.5))
    assert infotext(half, 1, "m").endswith("Face restoration: GFPGANv1.4, Face restoration visibility: 0.5")


# --- the geometry ----------------------------------------------------------------------------------------


def test_the_similarity_recovers_a_rotation_scale_and_shift():
    face = _face_at(300, 200, 0.3, angle=0.3)
    m = similarity(torch.tensor(face.landmarks), TEMPLATE)
    assert m[0, 0] == pytest.approx(math.cos(-0.3) / 0.3, rel=1e-6)
    assert m[1, 0] == pytest.approx(math.sin(-0.3) / 0.3, rel=1e-6)
    back = m[:, :2] @ torch.tensor(face.landmarks, dtype=torch.float64).T + m[:, 2:]
    assert torch.allclose(back.T, TEMPLATE.double(), atol=1e-3)


@pytest.mark.parametrize("cx, cy, scale, angle", [(300, 200, 0.3, 0.3), (40, 30, 0.4, -0.5), (256, 256, 1.2, 0.0)])
def test_a_face_restored_unchanged_comes_back_unchanged_and_only_its_region_is_touched(cx, cy, scale, angle):
    original = np.array(_image(600, 400))
    face = _face_at(cx, cy, scale, angle)  # near the edge too: the crop reaches outside the image
    pixels = original.copy()
    restore_face_in(pixels, face, lambda crop: crop, 1.0)
    assert np.abs(pixels.astype(int) - original).max() <= 1
    blacked = original.copy()
    restore_face_in(blacked, face, torch.zeros_like, 1.0)
    changed = np.nonzero((blacked != original).any(2))
    assert changed[0].size > 0
    half = CROP * scale * 0.75  # the crop's half-diagonal, scaled: nothing changes beyond it
    assert np.hypot(changed[1] - cx, changed[0] - cy).max() <= half + 2
    assert (blacked[int(cy) if cy < 400 else 399, int(cx)] == 0).all()  # the face's middle is the restorer's


def test_visibility_blends_the_restored_face_with_the_original():
    original = np.array(_image(600, 400))
    face = _face_at(300, 200, 0.3)
    half = original.copy()
    restore_face_in(half, face, torch.zeros_like, 0.5)
    assert np.abs(half[200, 300].astype(int) - original[200, 300] / 2).max() <= 1
    none = original.copy()
    restore_face_in(none, face, torch.zeros_like, 0.0)
    assert (none == original).all()


def test_small_faces_are_skipped_and_a_crowd_is_bounded_largest_first():
    faces = [_face_at(100, 100, 0.01)] + [_face_at(50 * i, 50, 0.05 + 0.01 * i) for i in range(MAX_FACES + 4)]
    kept = faces_to_restore(faces)
    assert len(kept) == MAX_FACES and faces[0] not in kept  # eyes 1.3 pixels apart: not restorable
    assert kept[0] is faces[-1]


# --- the detector -----------------------------------------------------------------------------------------


def test_the_anchors_are_in_the_heads_order():
    found = priors(64, 96)
    assert found.shape == (8 * 12 * 2 + 4 * 6 * 2 + 2 * 3 * 2, 4)
    assert found[0].tolist() == pytest.approx([4 / 96, 4 / 64, 16 / 96, 16 / 64])
    assert found[1].tolist() == pytest.approx([4 / 96, 4 / 64, 32 / 96, 32 / 64])  # two anchors per place
    assert found[2].tolist() == pytest.approx([12 / 96, 4 / 64, 16 / 96, 16 / 64])  # then the next column


def test_decoding_turns_head_outputs_into_boxes_and_landmarks_in_image_pixels():
    anchors = priors(64, 64)
    boxes, scores, landmarks = torch.zeros(1, len(anchors), 4), torch.zeros(1, len(anchors), 2), \
        torch.zeros(1, len(anchors), 10)
    scores[0, :, 0] = 1.0
    scores[0, 4] = torch.tensor([0.05, 0.95])  # anchor 4 (16 pixels, third column): a face, exactly the anchor's box
    landmarks[0, 4] = torch.tensor([1.0, 0.0] * 5)  # each point one unit (0.1 x 16 pixels) right of its centre
    found = decode(boxes, scores, landmarks, 64, 64, scale=2.0)  # the input was the image at twice its size
    assert len(found) == 1
    cx, cy = anchors[4, :2].tolist()
    assert found[0].box == pytest.approx(((cx * 64 - 8) / 2, (cy * 64 - 8) / 2, (cx * 64 + 8) / 2, (cy * 64 + 8) / 2))
    assert found[0].landmarks[0] == pytest.approx(((cx * 64 + 1.6) / 2, cy * 64 / 2))


def test_overlapping_boxes_are_one_face():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]], dtype=torch.float32)
    assert nms(boxes, torch.tensor([0.9, 0.95, 0.8]), 0.4) == [1, 2]


def test_the_tiny_detectors_find_one_centred_face_or_none(tiny, faceless):
    rgb = torch.from_numpy(np.array(_image())).permute(2, 0, 1)
    found = detect(load_detector(torch.load(tiny[1], weights_only=True)), rgb)
    assert len(found) == 1
    (lx, ly), (rx, ry) = found[0].landmarks[:2]
    assert 200 < lx < rx < 312 and abs(ly - ry) < 1
    assert detect(load_detector(torch.load(faceless[1], weights_only=True)), rgb) == []


def test_a_module_prefix_is_dropped_and_other_weights_are_refused(tiny):
    state = torch.load(tiny[1], weights_only=True)
    load_detector({f"module.{k}": v for k, v in state.items()})
    with pytest.raises(ValueError, match="not a RetinaFace"):
        load_detector({"conv.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="without"):
        load_detector({k: v for k, v in state.items() if not k.startswith("LandmarkHead")})


# --- the engine on the tiny files ---------------------------------------------------------------------------


def test_the_engine_restores_the_face_it_finds_and_nothing_else(tiny):
    models = FaceModels()
    image = _image()
    restored, count = models.restore(tiny[0], tiny[1], image, 1.0, lambda: None)
    assert count == 1 and restored.size == image.size
    diff = np.nonzero((np.array(restored) != np.array(image)).any(2))
    assert 100 < diff[1].min() and diff[1].max() < 412 and 100 < diff[0].min()  # the middle face's region
    assert models.describe(tiny[0])[0] == "RestoreFormer"


def test_no_face_found_leaves_the_image_as_it_was(tiny, faceless):
    image = _image(320, 200)
    restored, count = FaceModels().restore(tiny[0], faceless[1], image, 1.0, lambda: None)
    assert count == 0 and (np.array(restored) == np.array(image)).all()


def test_a_cancel_stops_between_faces(tiny):
    with pytest.raises(JobCancelledError):
        FaceModels().restore(tiny[0], tiny[1], _image(), 1.0, lambda: StopMode.CANCEL)


@pytest.mark.parametrize("content", [b"not a model at all", b""])
def test_a_hostile_or_broken_file_is_a_load_error_naming_it(tmp_path, tiny, content):
    bad = tmp_path / "evil.pth"
    bad.write_bytes(content)
    with pytest.raises(PipelineLoadError, match="evil.pth"):
        FaceModels().restore(bad, tiny[1], _image(), 1.0, lambda: None)
    with pytest.raises(PipelineLoadError, match="face detector evil.pth"):
        FaceModels().restore(tiny[0], bad, _image(), 1.0, lambda: None)


def test_a_pickle_that_runs_code_is_never_run(tmp_path, tiny):
    class Boom:
        def __reduce__(self):
            return (print, ("ran",))

    bad = tmp_path / "detection_Resnet50_Final.pth"
    torch.save({"x": Boom()}, bad)
    with pytest.raises(PipelineLoadError, match="face detector"):
        FaceModels().restore(tiny[0], bad, _image(), 1.0, lambda: None)


def test_an_upscaler_in_the_face_folder_is_refused_as_no_face_restorer(tmp_path, tiny):
    from model_server.engine.tiny_upscalers import write_tiny_upscalers

    upscaler = write_tiny_upscalers(tmp_path, names=("tiny-compact-x2.safetensors",))[0]
    with pytest.raises(PipelineLoadError, match="not a face restorer"):
        FaceModels().restore(upscaler, tiny[1], _image(), 1.0, lambda: None)


def test_the_tiny_files_are_named_as_users_have_them(tiny):
    assert [p.name for p in tiny] == [RESTORER, DETECTOR]
