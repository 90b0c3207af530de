"""The layering rules from the design, checked on the source and on a real import."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT

HEAVY = {"torch", "diffusers", "transformers", "accelerate", "safetensors"}
TORCH_IMPORTERS = {"model_server/diffusers_pipeline.py", "model_server/tiny_model.py", "model_server/convert.py",
                   "model_server/preset_parts.py", "model_server/layout.py", "model_server/deepcache.py",
                   "model_server/token_merging.py"}


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def package_files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("path", package_files("protocol"), ids=str)
def test_protocol_imports_only_the_standard_library_and_msgspec(path):
    third_party = imports_of(path) - set(sys.stdlib_module_names) - {"protocol", "__future__"}
    assert third_party <= {"msgspec"}, third_party


@pytest.mark.parametrize("path", package_files("gateway"), ids=str)
def test_gateway_never_imports_the_model_server_or_torch(path):
    assert not imports_of(path) & (HEAVY | {"model_server"})


@pytest.mark.parametrize("path", package_files("model_server"), ids=str)
def test_only_the_diffusers_modules_import_torch(path):
    if str(path.relative_to(ROOT)) not in TORCH_IMPORTERS:
        assert not imports_of(path) & HEAVY


def test_importing_and_running_the_gateway_does_not_load_torch():
    code = ("import sys; from gateway import create_app; app = create_app(); "
            "app.test_client().get('/openapi.json'); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in {'torch', 'diffusers', 'transformers'}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_fake_model_server_runs_without_torch():
    code = ("import sys; sys.modules['torch'] = None; "  # any torch import now fails
            "from model_server.pipeline import make_pipeline; from model_server.settings import ModelServerSettings; "
            "p = make_pipeline(ModelServerSettings(pipeline='fake')); print(type(p).__name__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "FakePipeline"
