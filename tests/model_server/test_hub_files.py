"""What counts as a hub id (downloaded, with progress) rather than a local path (read as it is)."""

from __future__ import annotations

import pytest

from model_server.engine.preset_parts import missing
from model_server.loading.hub_files import is_hub_id


@pytest.mark.parametrize("source", ["CompVis/stable-diffusion-v1-4", "madebyollin/taesd", "sd-cpu/tiny-sd",
                                    "org/model.v2"])
def test_hub_ids(source):
    assert is_hub_id(source)


@pytest.mark.parametrize("source", ["./model/unet", "../models/sd", "~/models/sd", "/opt/models/sd", "a/b/c",
                                    "org/na me", "tiny", ".hidden/x"])
def test_paths_and_nonsense_are_not_hub_ids_and_a_missing_one_says_so(source):
    assert not is_hub_id(source)
    assert missing(source, "config.json") == f"{source!r} does not exist"


def test_an_existing_directory_is_a_path_even_when_it_looks_like_an_id(tmp_path, monkeypatch):
    (tmp_path / "org" / "model").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert not is_hub_id("org/model") and missing("org/model", "config.json") == ""
