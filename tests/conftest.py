"""Fixtures shared by every tier: the tiny model directory and a place for process logs."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.helpers import PYTHON, ROOT

# Tests never reach the hub (no weights can be downloaded here): a hub id fails at once.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random-weight SD pipeline, written once per run by the project's own command."""
    folder = tmp_path_factory.mktemp("tiny-sd")
    subprocess.run([PYTHON, "-m", "model_server.engine.tiny_model", str(folder)], cwd=ROOT, check=True,
                   capture_output=True)
    return folder


@pytest.fixture(scope="session")
def tiny_ir_model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model as the OpenVINO organisation publishes int8 models (optimum-intel's all-IR layout, the UNet
    hybrid-quantized), written once per run by the project's own exporter."""
    folder = tmp_path_factory.mktemp("ir") / "tiny-sd-int8-ov"
    subprocess.run([PYTHON, "-m", "model_server.engine.openvino_ir_export", str(tiny_model_dir), str(folder),
                    "--int8", "hybrid"], cwd=ROOT, check=True, capture_output=True)
    return folder


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("logs")


def pytest_collection_modifyitems(items):
    """One rule for the fast tier: a test that starts processes (it uses ``log_dir``) or loads a
    diffusers model (``tiny_model_dir``) is ``slow``, whether or not its module says so."""
    for item in items:
        if {"tiny_model_dir", "log_dir"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def tiny_lora_dir(tmp_path_factory) -> Path:
    """Two random LoRAs for the tiny model: ink (kohya/A1111 layout) and pencil (diffusers layout)."""
    from model_server.engine.tiny_model import build_tiny_pipeline, write_random_lora

    folder = tmp_path_factory.mktemp("loras")
    write_random_lora(folder / "ink.safetensors", build_tiny_pipeline(), seed=1)
    write_random_lora(folder / "pencil.safetensors", build_tiny_pipeline(), seed=2, kohya=False)
    return folder
