"""Model families as plain facts (model_server/families): what a model is, read from its files
without torch, and the sizes each family was trained at."""

from __future__ import annotations

import json
import struct

from model_server.engine.single_file import config_for
from model_server.families import FAMILIES, detect
from model_server.models.catalog import Catalog
from protocol.contract import Limits


def safetensors_header(path, keys: list[str]):
    header = json.dumps({k: {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]} for k in keys}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 4)
    return path


def test_a_single_file_is_told_by_its_tensor_names_read_from_the_header_only(tmp_path):
    xl = safetensors_header(tmp_path / "xl.safetensors", ["conditioner.embedders.1.model.ln_final.weight",
                                                          "model.diffusion_model.label_emb.0.0.weight"])
    sd2 = safetensors_header(tmp_path / "sd2.safetensors", ["cond_stage_model.model.ln_final.weight"])
    sd1 = safetensors_header(tmp_path / "sd1.safetensors", ["cond_stage_model.transformer.text_model.x"])
    assert [detect(str(p), "single_file") for p in (xl, sd2, sd1)] == ["sdxl", "sd2", "sd1"]
    hostile = tmp_path / "huge-header.safetensors"
    hostile.write_bytes(struct.pack("<Q", 2**62) + b"{}")
    assert detect(str(hostile), "single_file") == "sd1"  # not read, not a crash
    assert detect(str(tmp_path / "missing.safetensors"), "single_file") == "sd1"


def test_a_folder_is_told_by_its_model_index_or_unet_and_a_hub_id_by_its_name_when_not_cached(tmp_path):
    (tmp_path / "xl").mkdir()
    (tmp_path / "xl" / "model_index.json").write_text('{"_class_name": "StableDiffusionXLPipeline"}')
    (tmp_path / "sd2" / "unet").mkdir(parents=True)
    (tmp_path / "sd2" / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    (tmp_path / "sd2" / "unet" / "config.json").write_text('{"cross_attention_dim": 1024}')
    assert detect(str(tmp_path / "xl"), "folder") == "sdxl" and detect(str(tmp_path / "sd2"), "folder") == "sd2"
    assert detect("stabilityai/sdxl-turbo", "hub") == "sdxl" and detect("segmind/SSD-1B", "hub") == "sdxl"
    assert detect("CompVis/stable-diffusion-v1-4", "hub") == "sd1"


def test_each_model_lists_its_familys_trained_sizes_within_the_bounds():
    catalog = Catalog("tiny-sdxl", "tiny-sdxl-turbo, tiny", limits=Limits(max_width=1216, max_height=1216))
    entries = {e.name: e for e in catalog.entries(None, {}, lambda m: {})}
    xl, turbo, sd = entries["tiny-sdxl"], entries["tiny-sdxl-turbo"], entries["tiny"]
    assert (xl.family, xl.default_width, xl.default_height) == ("sdxl", 1024, 1024)
    assert xl.sizes == ["1024x1024", "1152x896", "896x1152", "1216x832", "832x1216"]  # 1344 wide is over the bound
    assert (turbo.default_width, turbo.sizes[0]) == (512, "512x512") and turbo.one_step
    assert len(turbo.sizes) == len(set(turbo.sizes))
    assert (sd.family, sd.default_width) == ("sd1", 512)
    small = Catalog("tiny", limits=Limits(default_size=384)).entries(None, {}, lambda m: {})[0]
    assert small.default_width == 384  # DEFAULT_SIZE holds for the families trained at 512
    assert FAMILIES["sdxl"].text_encoders == ("text_encoder", "text_encoder_2")


def test_single_file_configs_are_one_for_all_or_one_per_family():
    assert config_for("auto", "sdxl") == "auto" and config_for("/m/sd15", "sdxl") == "/m/sd15"
    per_family = "sd1=/m/sd15, sdxl=stabilityai/stable-diffusion-xl-base-1.0"
    assert config_for(per_family, "sdxl") == "stabilityai/stable-diffusion-xl-base-1.0"
    assert config_for(per_family, "sd1") == "/m/sd15" and config_for(per_family, "sd2") == "auto"


def test_few_step_models_are_named_so_and_get_the_turbo_preset():
    from model_server.models.catalog import is_one_step

    for name in ("stabilityai/sdxl-turbo", "ByteDance/SDXL-Lightning", "my-Hyper-SDXL-merge", "dmd2-sdxl", "sdxs-512"):
        assert is_one_step(name, name), name
    assert not is_one_step("stabilityai/stable-diffusion-xl-base-1.0", "stabilityai/stable-diffusion-xl-base-1.0")
