"""The models and LoRAs a job may name (model_server/models), without torch: the catalog's names
and kinds, the LoRA folder and its hashes, and the switching ModelSet over fake pipelines."""

from __future__ import annotations

import hashlib
import json
import os
import time

import pytest

from model_server.errors import Rejection, load_error
from model_server.loading.progress import LoadProgress
from model_server.fake_pipeline import FakePipeline
from model_server.models.catalog import Catalog, make_source, parse_list
from model_server.models.loras import LoraFiles, addnet_hash
from model_server.models.model_set import ModelSet
from model_server.pipeline import PipelineLoadError
from protocol.messages import GenerationParams, LoraRef


def safetensors_file(path, payload: bytes = b"\0" * 16):
    """A minimal valid safetensors file (one uint8 tensor)."""
    header = json.dumps({"w": {"dtype": "U8", "shape": [len(payload)], "data_offsets": [0, len(payload)]}}).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(len(header).to_bytes(8, "little") + header + payload)
    return path


def diffusers_folder(path, trailing: bool = False):
    (path / "scheduler").mkdir(parents=True)
    (path / "model_index.json").write_text("{}")
    spacing = {"timestep_spacing": "trailing"} if trailing else {}
    (path / "scheduler" / "scheduler_config.json").write_text(json.dumps(spacing))
    return path


def test_the_catalog_names_the_default_the_listed_and_the_folders_models(tmp_path):
    models = tmp_path / "models"
    diffusers_folder(models / "dreamlike")
    diffusers_folder(models / "distilled", trailing=True)
    safetensors_file(models / "realistic-v5.safetensors")
    safetensors_file(models / "sdxs-512.safetensors")
    (models / "notes.txt").write_text("not a model")
    (models / "empty-dir").mkdir()
    catalog = Catalog("CompVis/stable-diffusion-v1-4", "stabilityai/sd-turbo, mine=" + str(tmp_path / "x.safetensors"),
                      str(models))
    found = {m.name: m for m in catalog.models()}
    assert list(found) == ["CompVis/stable-diffusion-v1-4", "stabilityai/sd-turbo", "mine", "distilled", "dreamlike",
                           "realistic-v5", "sdxs-512"]
    assert found["CompVis/stable-diffusion-v1-4"].default and found["CompVis/stable-diffusion-v1-4"].kind == "hub"
    assert found["realistic-v5"].kind == "single_file" and found["dreamlike"].kind == "folder"
    # one-step: by name (turbo, sdxs) or by a scheduler on trailing timesteps (how SD-Turbo ships)
    assert {n for n, m in found.items() if m.one_step} == {"stabilityai/sd-turbo", "distilled", "sdxs-512"}
    # sources are shown without local paths
    assert found["realistic-v5"].shown == "realistic-v5.safetensors" and str(tmp_path) not in found["mine"].shown


def test_finding_a_model_by_name_file_name_or_a1111_title(tmp_path):
    safetensors_file(tmp_path / "realistic-v5.safetensors")
    catalog = Catalog("tiny", "", str(tmp_path))
    assert catalog.find("").name == "tiny" and catalog.find("tiny").default
    for asked in ("realistic-v5", "realistic-v5.safetensors", "realistic-v5.safetensors [0123abcd45]",
                  "realistic-v5 [0123abcd45]"):
        assert catalog.find(asked).name == "realistic-v5", asked
    assert catalog.find("../realistic-v5") is None and catalog.find("nope") is None


def test_the_folder_is_listed_again_when_it_changes(tmp_path):
    catalog = Catalog("tiny", "", str(tmp_path))
    assert catalog.names() == ["tiny"]
    safetensors_file(tmp_path / "new-model.safetensors")
    os.utime(tmp_path, (time.time() + 5, time.time() + 5))  # a coarse clock must still see the change
    assert catalog.names() == ["tiny", "new-model"]


def test_pickle_checkpoints_are_refused_and_names_are_kept_first_come():
    with pytest.raises(ValueError, match="pickle"):
        parse_list("old=/models/old.ckpt")
    catalog = Catalog("tiny", "tiny=/elsewhere/model-dir")
    assert [m.source for m in catalog.models()] == ["tiny"]
    assert make_source("tiny-turbo").one_step and not make_source("tiny").one_step


def test_lora_files_are_named_for_the_file_and_hashed_as_a1111_does(tmp_path):
    style = safetensors_file(tmp_path / "styles" / "ink.safetensors", b"\1" * 32)
    safetensors_file(tmp_path / "bad<name>.safetensors")  # would break the prompt syntax: not listed
    (tmp_path / "readme.md").write_text("x")
    loras = LoraFiles(str(tmp_path))
    assert loras.names() == ["ink"] and loras.find("ink") == style
    # A1111's "addnet" hash: sha256 of the tensor bytes after the header; 12 hex digits in infotexts
    assert addnet_hash(style) == hashlib.sha256(b"\1" * 32).hexdigest()
    assert loras.short_hash(style) == hashlib.sha256(b"\1" * 32).hexdigest()[:12]
    entry = loras.entries(loaded={"ink"})[0]
    assert entry.hash == loras.short_hash(style) and entry.loaded and entry.file == "ink.safetensors"
    safetensors_file(tmp_path / "styles" / "pencil.safetensors")
    os.utime(tmp_path / "styles", (time.time() + 5, time.time() + 5))
    assert loras.names() == ["ink", "pencil"]
    assert LoraFiles("").names() == [] and LoraFiles(str(tmp_path / "missing")).names() == []


def make_set(tmp_path, fail: set[str] = frozenset()):
    lora_dir = tmp_path / "loras"
    safetensors_file(lora_dir / "ink.safetensors")
    loads = []

    def load(model, progress):
        progress.start("loading", model.name)
        loads.append(model.name)
        if model.name in fail:
            raise load_error(f"cannot load {model.name}", "hint")
        return FakePipeline(model_id=model.name)

    catalog = Catalog("tiny", "other=/x/other-model, broken=/x/broken, tiny-turbo")
    return ModelSet(catalog, LoraFiles(str(lora_dir)), load), loads


def params(**kw) -> GenerationParams:
    return GenerationParams(**{"prompt": "a cat", "seed": 1, "steps": 2, **kw})


def test_a_job_naming_another_model_switches_and_says_so(tmp_path):
    models, loads = make_set(tmp_path)
    models.load_default(LoadProgress())
    told = []
    assert models.prepare(params(), told.append) == ("tiny", None, {})
    name, switch, hashes = models.prepare(params(model="other", loras=[LoraRef(name="ink", weight=0.5)]), told.append)
    assert name == "other" and switch.from_model == "tiny" and switch.to_model == "other" and switch.seconds >= 0
    assert switch.rss_bytes > 0 and list(hashes) == ["ink"] and len(hashes["ink"]) == 12
    assert told[0] == "loading model other" and "loading model other: loading" in told
    assert loads == ["tiny", "other"] and models.loaded.name == "other" and models.model_id == "other"
    assert models.prepare(params(model="other"), told.append)[1] is None  # already loaded: no switch
    assert [m.name for m in models.listing().models if m.loaded] == ["other"]


def test_a_failed_switch_fails_that_job_and_the_next_loads_what_it_needs(tmp_path):
    models, loads = make_set(tmp_path, fail={"broken"})
    models.load_default(LoadProgress())
    with pytest.raises(PipelineLoadError, match="cannot load broken"):
        models.prepare(params(model="broken"), lambda text: None)
    assert models.current is None and models.schedulers() and models.engine(params()) == "not loaded yet"
    assert models.prepare(params(), lambda text: None)[0] == "tiny"
    assert loads == ["tiny", "broken", "tiny"]


def test_unknown_names_and_presets_a_model_cannot_run_are_refused_with_the_known_ones(tmp_path):
    models, _ = make_set(tmp_path)
    for bad, words in ((params(model="nope"), ["unknown model 'nope'", "tiny", "other"]),
                       (params(loras=[LoraRef(name="nope")]), ["unknown LoRA 'nope'", "ink"]),
                       (params(loras=[LoraRef(name="ink"), LoraRef(name="ink", weight=0.2)]), ["named twice"]),
                       (params(preset="turbo"), ["tiny is not a one-step model", "quality"]),
                       (params(model="tiny-turbo", preset="fast"), ["one-step model: use turbo"])):
        with pytest.raises(Rejection) as info:
            models.check(bad)
        text = info.value.error.message + " " + info.value.error.hint
        assert all(word in text for word in words), text
    models.check(params(model="tiny-turbo", preset="turbo"))
    listing = {m.name: m for m in models.listing().models}
    assert "turbo" in listing["tiny"].unavailable_presets and "turbo" not in listing["tiny-turbo"].unavailable_presets
    assert "fast" in listing["tiny-turbo"].unavailable_presets


def test_models_that_fit_stay_in_memory_and_the_least_recently_used_goes_first(tmp_path):
    models, loads = make_set(tmp_path)
    models.max_resident = 2
    room = {"fits": True}
    models.keep = lambda model, params, names: room["fits"]
    told = []
    models.loaded_hook = lambda name, before, after: told.append(name)
    models.load_default(LoadProgress())
    models.prepare(params(model="other"), lambda text: None)
    assert models.resident_names() == ["tiny", "other"]
    name, switch, _ = models.prepare(params(), lambda text: None)  # back to tiny: still in memory, no load
    assert name == "tiny" and switch is None and models.loaded.name == "tiny"
    assert models.prepare(params(model="other"), lambda text: None)[1] is None
    assert loads == ["tiny", "other"] and told == ["tiny", "other"]
    # MAX_RESIDENT_MODELS: a third model drops the least recently used (tiny)
    models.prepare(params(model="tiny-turbo", preset="turbo"), lambda text: None)
    assert models.resident_names() == ["other", "tiny-turbo"] and loads[-1] == "tiny-turbo"
    # the budget says the next one does not fit beside them: both go
    room["fits"] = False
    models.prepare(params(), lambda text: None)
    assert models.resident_names() == ["tiny"] and loads == ["tiny", "other", "tiny-turbo", "tiny"]
