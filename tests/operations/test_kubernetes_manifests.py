"""deploy/kubernetes: every manifest validated offline against pinned Kubernetes schemas (strict:
no unknown fields), and the pieces agreeing with each other and with the service's own settings."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from common.curve import make_keys
from gateway.settings import GatewaySettings
from model_server.settings import ModelServerSettings
from tests.helpers import ROOT

BASE = ROOT / "deploy" / "kubernetes"
# The oldest release still commonly run, and the newest the validator knows.
VERSIONS = ("1.31.0", "1.37.0")


def documents() -> list[tuple[str, dict]]:
    found = []
    for path in sorted(BASE.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            found += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return found


def kind(name: str, wanted: str) -> dict:
    return next(doc for _, doc in documents() if doc["kind"] == wanted and doc["metadata"]["name"] == name)


def env_of(workload: dict) -> dict[str, str]:
    container = workload["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("name,doc", documents(), ids=lambda v: v if isinstance(v, str) else v["kind"])
def test_each_manifest_is_valid_kubernetes(name, doc, version):
    kubernetes_validate.validate(doc, version, strict=True)


def test_the_kustomization_lists_every_manifest():
    listed = yaml.safe_load((BASE / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == sorted(p.name for p in BASE.glob("*.yaml") if p.name != "kustomization.yaml")


def test_gateways_find_every_model_server_through_the_headless_service():
    service, gateway = kind("sd-cpu-model", "Service"), kind("sd-cpu-gateway", "Deployment")
    assert service["spec"]["clusterIP"] == "None"
    port = service["spec"]["ports"][0]["port"]
    assert env_of(gateway)["MODEL_SERVER_ADDRESS"] == f"dns+tcp://{service['metadata']['name']}:{port}"
    model = kind("sd-cpu-model", "StatefulSet")
    assert env_of(model)["MODEL_SERVER_BIND"] == f"tcp://0.0.0.0:{port}"
    assert service["spec"]["selector"] == model["spec"]["template"]["metadata"]["labels"]


def test_probes_replicas_budgets_and_autoscaling_are_wired_to_the_right_things():
    gateway = kind("sd-cpu-gateway", "Deployment")
    container = gateway["spec"]["template"]["spec"]["containers"][0]
    assert gateway["spec"]["replicas"] >= 2
    assert container["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    model = kind("sd-cpu-model", "StatefulSet")["spec"]["template"]["spec"]["containers"][0]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):  # the protocol's Ping, not a port check
        assert model[probe]["exec"]["command"] == ["python", "-m", "model_server.healthcheck"]
    assert model["resources"]["limits"]["memory"] == "6Gi"  # above float32's measured 4.4-4.5 GiB peak
    for name in ("sd-cpu-gateway", "sd-cpu-model"):
        labels = kind(name, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"]
        assert labels == {"app.kubernetes.io/name": name}
    target = kind("sd-cpu-model", "HorizontalPodAutoscaler")["spec"]
    assert target["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "sd-cpu-model"}
    assert target["metrics"][0]["external"]["metric"]["name"] == "sdcpu_queue_depth"  # what /metrics exports


def _mounted(workload: dict, env: dict[str, str], tmp_path: Path, keys: Path) -> dict[str, str]:
    """The workload's env with its secret mounts pointed at real files: each path the env names
    must be an item of a mounted Secret."""
    spec = workload["spec"]["template"]["spec"]
    mounts = {m["name"]: m["mountPath"] for m in spec["containers"][0]["volumeMounts"]}
    files = {}
    for volume in spec["volumes"]:
        if "secret" in volume:
            for item in volume["secret"]["items"]:
                files[f"{mounts[volume['name']]}/{item['path']}"] = item["key"]
    tmp_path.mkdir()
    source = {"server.key_secret": keys / "server.key_secret", "server.key": keys / "server.key",
              "gateway.key_secret": keys / "gateway.key_secret", "gateway.key": keys / "clients" / "gateway.key"}
    resolved = dict(env)
    for name, value in env.items():
        if value.startswith("/etc/sd-cpu/"):
            if value in files:
                resolved[name] = str(source[files[value]])
            else:  # a directory of keys: every item mounted under it
                items = [key for path, key in files.items() if path.startswith(value + "/")]
                assert items, f"{name}={value} is not mounted"
                folder = tmp_path / name
                folder.mkdir()
                for key in items:
                    (folder / key).write_bytes(source[key].read_bytes())
                resolved[name] = str(folder)
    return resolved


def test_the_settings_in_the_manifests_start_the_real_services(tmp_path):
    """The model server accepts its remote bind (CURVE is set up) and the gateway its discovery."""
    keys = tmp_path / "keys"  # what `python -m common.curve keys` makes for the sd-cpu-curve Secret
    make_keys(keys)
    model = kind("sd-cpu-model", "StatefulSet")
    settings = ModelServerSettings.from_env(_mounted(model, env_of(model), tmp_path / "model", keys))
    assert settings.curve is not None and settings.outputs_peers == "/data/outputs"
    gateway = kind("sd-cpu-gateway", "Deployment")
    gateway_settings = GatewaySettings.from_env(_mounted(gateway, env_of(gateway), tmp_path / "gateway", keys))
    assert gateway_settings.curve.server_public == settings.curve.public


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (its built-in kustomize) not installed")
def test_the_kustomize_build_is_what_gets_applied_and_it_is_valid_too():
    built = subprocess.run(["kubectl", "kustomize", str(BASE)], capture_output=True, text=True, timeout=60, check=True)
    docs = [doc for doc in yaml.safe_load_all(built.stdout) if doc]
    assert len(docs) == len(documents())
    for doc in docs:
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "sd-cpu"
        for version in VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)
