"""The preprocessors that run an annotator model, on random-weight stand-ins of the real files
(model_server/engine/stand_in_annotators.py): what ANNOTATOR_DIR's listing finds in either layout, each
module's map, refusals that say what to put where, and hostile or broken weights failing the job cleanly."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from PIL import Image, ImageDraw

from model_server.control.annotator_files import AnnotatorFiles
from model_server.engine.annotators import Annotators
from model_server.control.catalog import ControlNets
from model_server.control.preprocessors import control_maps, detect
from model_server.engine.stand_in_annotators import write_stand_in_annotators
from model_server.errors import PipelineLoadError, Rejection
from protocol.control import ANNOTATOR_MODULES
from protocol.messages import ControlUnit, GenerationParams


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("annotators")
    write_stand_in_annotators(folder)
    return folder


def photo(size=(120, 90)) -> Image.Image:
    image = Image.new("RGB", size, (40, 90, 160))
    draw = ImageDraw.Draw(image)
    draw.rectangle((20, 20, 70, 60), fill=(230, 200, 40))
    draw.line((0, 80, size[0], 10), fill="white", width=4)
    return image


def test_the_listing_finds_the_hubs_files_and_a1111s_download_folders_alike(folder, tmp_path):
    files = AnnotatorFiles(str(folder))
    assert set(files.modules()) == set(ANNOTATOR_MODULES) - {"lineart_coarse", "lineart_anime"}
    a1111 = tmp_path / "annotator" / "downloads"
    (a1111 / "lineart").mkdir(parents=True)
    (a1111 / "lineart" / "sk_model2.pth").write_bytes((folder / "sk_model.pth").read_bytes())
    (a1111 / ".cache").mkdir()
    (a1111 / ".cache" / "ControlNetHED.pth").write_bytes(b"hidden: never listed")
    listed = AnnotatorFiles(str(tmp_path))
    assert listed.modules() == ["lineart_coarse"]
    assert AnnotatorFiles("").modules() == [] and AnnotatorFiles(str(tmp_path / "missing")).modules() == []


def test_depth_anything_v2_is_taken_before_v1_and_a_config_without_weights_is_none(folder, tmp_path):
    import shutil

    for name in ("depth-anything-small-hf", "Depth-Anything-V2-Small-hf"):
        shutil.copytree(folder / "tiny-depth-anything", tmp_path / name)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text('{"model_type": "dpt"}')  # no weights: not midas
    files = AnnotatorFiles(str(tmp_path))
    assert files.path("depth_anything_v2").name == "Depth-Anything-V2-Small-hf"
    assert "depth_midas" not in files.modules()


@pytest.mark.parametrize("module", ["depth_anything", "depth_midas", "lineart_realistic", "softedge_hed",
                                    "softedge_hedsafe", "scribble_hed", "softedge_pidinet", "scribble_pidinet", "mlsd",
                                    "openpose", "normal_bae"])
def test_each_annotator_module_makes_a_deterministic_rgb_map_at_its_resolution(folder, module):
    annotators = Annotators(AnnotatorFiles(str(folder)))
    made = detect(module, photo(), 128, annotators=annotators)
    assert made.mode == "RGB" and min(made.size) == 128 and abs(made.size[0] - 171) <= 64
    again = detect(module, photo(), 128, annotators=annotators)
    assert np.array_equal(np.asarray(made), np.asarray(again))


def test_the_variants_of_one_annotator_differ_and_mlsds_thresholds_act(folder):
    annotators = Annotators(AnnotatorFiles(str(folder)))
    maps = {m: np.asarray(detect(m, photo(), 128, annotators=annotators))
            for m in ("softedge_hed", "softedge_hedsafe", "scribble_hed")}
    assert not np.array_equal(maps["softedge_hed"], maps["softedge_hedsafe"])
    assert set(np.unique(maps["scribble_hed"])) <= {0, 255}  # a scribble is black and white
    loose, strict = (np.asarray(detect("mlsd", photo(), 128, a=a, b=b, annotators=annotators))
                     for a, b in ((0.01, 20.0), (2.0, 0.01)))
    assert (loose > 0).sum() >= (strict > 0).sum()


def test_one_annotator_stays_loaded_and_a_job_uses_it_through_its_units(folder):
    annotators = Annotators(AnnotatorFiles(str(folder)))
    p = GenerationParams(prompt="a cat", seed=1, width=64, height=64, controls=[
        ControlUnit(module="lineart_realistic", model="x"), ControlUnit(module="softedge_hed", model="x")])
    maps = control_maps(p, [photo(), photo()], None, None, 1, annotators)
    assert [m.image.size for m in maps] == [(64, 64), (64, 64)]
    assert annotators._loaded[0] == "hed"  # the lineart model went when HED came


def test_a_missing_annotator_is_refused_saying_what_to_put_where(folder):
    nets = ControlNets("", AnnotatorFiles(str(folder)))
    for module, fragment in (("lineart_coarse", "sk_model2.pth"), ("lineart_anime", "netG.pth")):
        with pytest.raises(Rejection) as info:
            nets.check(GenerationParams(prompt="x", seed=0, mode="detect", controls=[ControlUnit(module=module)]), "")
        assert fragment in info.value.error.message and "fetch --annotators" in info.value.error.hint
    nets.check(GenerationParams(prompt="x", seed=0, mode="detect", controls=[ControlUnit(module="hed")]), "")  # present


class _Payload:
    def __reduce__(self):
        return (exec, ("open('/tmp/annotator-pwned', 'w').write('pwned')",))


def test_a_hostile_or_broken_weights_file_fails_the_job_plainly_and_runs_no_code(folder, tmp_path):
    import pathlib

    pathlib.Path("/tmp/annotator-pwned").unlink(missing_ok=True)
    (tmp_path / "ControlNetHED.pth").write_bytes(pickle.dumps({"x": _Payload()}, protocol=2))
    (tmp_path / "sk_model.pth").write_bytes(b"not a checkpoint")
    annotators = Annotators(AnnotatorFiles(str(tmp_path)))
    for module, name in (("softedge_hed", "ControlNetHED.pth"), ("lineart_realistic", "sk_model.pth")):
        with pytest.raises(PipelineLoadError) as info:
            detect(module, photo(), 64, annotators=annotators)
        assert name in info.value.error.message and "fetch --annotators" in info.value.error.hint
        assert str(tmp_path) not in info.value.error.message  # no internal paths
    assert not pathlib.Path("/tmp/annotator-pwned").exists()


def test_fetch_annotators_keeps_what_is_there_and_says_what_to_do_offline(folder):
    import subprocess

    from tests.helpers import PYTHON, ROOT, base_env

    def fetch(*names):
        return subprocess.run([PYTHON, "-m", "model_server", "fetch", "--annotators", *names], cwd=ROOT, timeout=120,
                              env=base_env(ANNOTATOR_DIR=str(folder), HF_HUB_OFFLINE="1"), capture_output=True,
                              text=True)

    done = fetch("hed", "depth_anything")
    assert done.returncode == 0 and "hed: already there (ControlNetHED.pth)" in done.stderr, done.stderr
    offline = fetch("lineart_anime")
    assert offline.returncode == 1 and "copy netG.pth from lllyasviel/Annotators" in offline.stderr
    assert "Traceback" not in offline.stderr and not (folder / "netG.pth").exists()
