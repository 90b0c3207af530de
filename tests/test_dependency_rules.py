"""The layering rules from the design, checked on the source and on a real import."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT

HEAVY = {"torch", "diffusers", "transformers", "accelerate", "safetensors"}
ENGINE = ROOT / "model_server" / "engine"  # the only package that may import torch and its kin


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


@pytest.mark.parametrize("path", package_files("common"), ids=str)
def test_common_imports_only_the_standard_library_and_the_protocol(path):
    third_party = imports_of(path) - set(sys.stdlib_module_names) - {"protocol", "common", "__future__"}
    # the JSON log formatter (loaded only when asked), and pyzmq for the CURVE keys both sides load
    assert third_party <= {"pythonjsonlogger", "zmq"}, third_party


@pytest.mark.parametrize("path", package_files("gateway"), ids=str)
def test_gateway_never_imports_the_model_server_or_torch(path):
    assert not imports_of(path) & (HEAVY | {"model_server"})


@pytest.mark.parametrize("path", package_files("model_server"), ids=str)
def test_only_the_engine_package_imports_torch(path):
    if ENGINE not in path.parents:
        assert not imports_of(path) & HEAVY, "torch and its kin belong in model_server/engine/"


def test_the_engine_is_where_torch_is_imported():
    assert any(imports_of(path) & HEAVY for path in ENGINE.rglob("*.py"))


def _module_graph(package: str) -> dict[str, set[str]]:
    """Module -> the modules of ``package`` it imports (at any depth of the file), from the source."""
    modules = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
               for p in package_files(package)}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:  # "from pkg import submodule" needs the submodule, not pkg's body
                    sub = f"{node.module}.{alias.name}"
                    targets.add(sub if sub in modules else node.module)
            elif isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


@pytest.mark.parametrize("package", ["protocol", "common", "gateway", "model_server"])
def test_no_import_circles(package):
    graph, state = _module_graph(package), {}

    def visit(node, trail):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                pytest.fail("import circle: " + " -> ".join(trail + [node, nxt]))
            if nxt not in state:
                visit(nxt, trail + [node])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])


def test_importing_and_running_the_gateway_does_not_load_torch():
    code = ("import sys; from gateway import create_app; app = create_app(); "
            "app.test_client().get('/openapi.json'); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in {'torch', 'diffusers', 'transformers'}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_fake_model_server_runs_without_torch():
    code = ("import sys; sys.modules['torch'] = None; "  # any torch import now fails
            "from model_server.factory import make_pipeline; from model_server.settings import ModelServerSettings; "
            "p = make_pipeline(ModelServerSettings(pipeline='fake')); print(type(p).__name__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "FakePipeline"
