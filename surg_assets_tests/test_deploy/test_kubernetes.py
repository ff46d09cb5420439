"""deploy/k8s: Helm values for Dagster's chart and the web app's manifests, validated offline.

Two layers: the chart values against the repository's schema of the chart keys we use
(closed, so a misspelt key fails instead of being ignored by Helm), and every Kubernetes
object (the web app manifests, and pods assembled from the values' pod settings) against
the Kubernetes API's own schemas bundled in kubernetes-validate, in strict mode.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from .conftest import DEPLOY, require_tool, run_tool

K8S = DEPLOY / "k8s"
KUBERNETES_VERSION = "1.33.0"


def load_values() -> dict[str, Any]:
    return yaml.safe_load((K8S / "values-dagster.yaml").read_text())


def values_errors(values: dict[str, Any]) -> list[str]:
    schema = json.loads((K8S / "schema.values-dagster.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    return [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(values)]


def web_manifests() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((K8S / "web-app.yaml").read_text()) if d]


def gpu_pool() -> dict[str, Any]:
    return yaml.safe_load((K8S / "gpu-node-pool.yaml").read_text())


def test_helm_values_match_the_chart_schema() -> None:
    assert values_errors(load_values()) == []


def test_a_misspelt_chart_key_is_refused() -> None:
    values = load_values()
    values["dagsterWebserver"]["replicas"] = values["dagsterWebserver"].pop("replicaCount")
    assert any("replicas" in error for error in values_errors(values))


def test_helm_values_use_k8s_launcher_external_postgres_and_s3_logs() -> None:
    values = load_values()
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert values["postgresql"]["enabled"] is False
    assert values["postgresql"]["postgresqlParams"]["sslmode"] == "require"
    assert values["generatePostgresqlPasswordSecret"] is False
    assert "postgresqlPassword" not in values["postgresql"]
    assert values["computeLogManager"]["type"] == "S3ComputeLogManager"
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    assert deployment["dagsterApiGrpcArgs"] == ["--module-name", "surg_assets.definitions"]
    queue = values["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]
    assert {(t["key"], str(t.get("value"))) for t in queue["tagConcurrencyLimits"]} >= {
        ("surg/accelerator", "gpu")
    }


def test_gpu_step_tags_land_on_the_gpu_pool_and_only_there() -> None:
    pool = gpu_pool()
    step = pool["gpuStepK8sConfig"]
    assert int(step["container_config"]["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    assert step["pod_spec_config"]["node_selector"] == pool["nodeLabels"]
    for taint in pool["taints"]:
        assert any(
            t["key"] == taint["key"]
            and t["effect"] == taint["effect"]
            and (t["operator"] == "Exists" or t.get("value") == taint["value"])
            for t in step["pod_spec_config"]["tolerations"]
        ), taint
    # CPU services never tolerate the GPU taint, so they cannot occupy a GPU node.
    values = load_values()
    for section in (values["dagsterWebserver"], values["dagsterDaemon"]):
        assert "tolerations" not in section
        assert section["nodeSelector"] == {"surg/node-pool": "cpu"}


def test_the_projects_gpu_op_tags_match_the_node_pool() -> None:
    placement = pytest.importorskip("surg_assets.placement", reason="surg_assets not importable")
    k8s_config = placement.GPU_OP_TAGS["dagster-k8s/config"]
    pool = gpu_pool()
    assert k8s_config["pod_spec_config"]["node_selector"] == pool["nodeLabels"]
    assert (
        k8s_config["pod_spec_config"]["tolerations"]
        == (pool["gpuStepK8sConfig"]["pod_spec_config"]["tolerations"])
    )
    assert k8s_config["container_config"] == pool["gpuStepK8sConfig"]["container_config"]
    requests = k8s_config["container_config"]["resources"]["requests"]
    assert float(requests["cpu"]) <= pool["minimumNode"]["cpu"]


def test_web_app_runs_hardened_behind_default_deny() -> None:
    manifests = {(m["kind"], m["metadata"]["name"]): m for m in web_manifests()}
    pod = manifests[("Deployment", "surg-web")]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    (container,) = pod["containers"]
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert container["args"][:2] == ["surg", "serve"]
    deny = manifests[("NetworkPolicy", "default-deny-ingress")]["spec"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress"]}
    assert all(m["kind"] != "Secret" for m in manifests.values()), "secrets are never committed"
    assert manifests[("Ingress", "surg-web")]["spec"]["tls"]


def test_configmap_provides_what_the_dagster_instance_reads() -> None:
    instance = (DEPLOY / "dagster-k8s.yaml").read_text()
    configmap = next(m for m in web_manifests() if m["kind"] == "ConfigMap")
    secret_vars = {"DAGSTER_PG_USER", "DAGSTER_PG_PASSWORD"}
    for line in instance.splitlines():
        if line.strip().startswith("env:"):
            name = line.split(":", 1)[1].strip()
            assert name in configmap["data"] or name in secret_vars, name


def _pod(name: str, spec: dict[str, Any], container: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {**spec, "containers": [{"name": "main", "image": "surg:test", **container}]},
    }


def pods_from_values() -> list[dict[str, Any]]:
    """Pods carrying each pod-level setting of the values, in Kubernetes' own field names."""
    values = load_values()
    pods = []
    for name, section in (
        ("webserver", values["dagsterWebserver"]),
        ("daemon", values["dagsterDaemon"]),
        ("user-code", values["dagster-user-deployments"]["deployments"][0]),
    ):
        pods.append(
            _pod(
                name,
                {
                    "nodeSelector": section["nodeSelector"],
                    "securityContext": section["podSecurityContext"],
                    "tolerations": section.get("tolerations", []),
                },
                {"securityContext": section["securityContext"], "resources": section["resources"]},
            )
        )
    run = values["runLauncher"]["config"]["k8sRunLauncher"]["runK8sConfig"]
    pods.append(_pod("run", run["podSpecConfig"], run["containerConfig"]))
    # The GPU op tag uses the Python client's snake_case; the API takes camelCase.
    step = gpu_pool()["gpuStepK8sConfig"]
    pods.append(
        _pod(
            "gpu-step",
            {
                "nodeSelector": step["pod_spec_config"]["node_selector"],
                "tolerations": step["pod_spec_config"]["tolerations"],
            },
            {"resources": step["container_config"]["resources"]},
        )
    )
    return pods


def test_kubernetes_objects_match_the_api_schemas(tmp_path: Path) -> None:
    validate = require_tool("kubernetes-validate")
    for pod in pods_from_values():
        (tmp_path / f"pod-{pod['metadata']['name']}.yaml").write_text(yaml.safe_dump(pod))
    files = [K8S / "web-app.yaml", *sorted(tmp_path.glob("pod-*.yaml"))]
    output = run_tool([validate, "--strict", "-k", KUBERNETES_VERSION, *files])
    assert output.count("passed for resource") == len(web_manifests()) + len(pods_from_values())


def test_kubernetes_validation_catches_a_wrong_field(tmp_path: Path) -> None:
    validate = require_tool("kubernetes-validate")
    deployment = copy.deepcopy(next(m for m in web_manifests() if m["kind"] == "Deployment"))
    deployment["spec"]["replica"] = deployment["spec"].pop("replicas")
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(deployment))
    with pytest.raises(pytest.fail.Exception):
        run_tool([validate, "--strict", "-k", KUBERNETES_VERSION, broken])
