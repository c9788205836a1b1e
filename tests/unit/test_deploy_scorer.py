"""The extender's manifests: what kube-scheduler is told matches what the extender serves,
its settings file loads, and its RBAC grants exactly the verbs it uses."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml

from gpulet.api.resources import CORE_RESOURCE, MANAGED_RESOURCES, MEMORY_RESOURCE
from scorer.config import ScorerConfig, load_config

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def manifests() -> list[Path]:
    """Every YAML file under deploy/ but the Helm chart's (templates, not YAML)."""
    return [p for p in DEPLOY.rglob("*.yaml") if p.relative_to(DEPLOY).parts[0] != "helm"]


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def one(kind: str, name: str) -> dict[str, Any]:
    found = [
        d
        for f in manifests()
        for d in documents(f)
        if d.get("kind") == kind and d["metadata"].get("name") == name
    ]
    assert len(found) == 1, (kind, name, len(found))
    return found[0]


def test_the_scheduler_calls_the_extender_where_it_listens() -> None:
    (config,) = documents(DEPLOY / "scheduler" / "kube-scheduler-config.yaml")
    assert config["apiVersion"] == "kubescheduler.config.k8s.io/v1"
    (extender,) = config["extenders"]
    url = urlparse(extender["urlPrefix"])
    service = one("Service", "gpulet-scorer")
    assert url.hostname == f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc"
    assert url.port == service["spec"]["ports"][0]["port"]
    settings = load_config(DEPLOY / "scorer" / "scorer.yaml")
    assert settings.port == url.port
    assert (extender["filterVerb"], extender["prioritizeVerb"], extender["bindVerb"]) == (
        "filter",
        "prioritize",
        "bind",
    )
    assert extender["nodeCacheCapable"] is True and extender["weight"] > 0
    managed = {r["name"]: r["ignoredByScheduler"] for r in extender["managedResources"]}
    assert set(managed) == set(MANAGED_RESOURCES)
    assert {r for r, ignored in managed.items() if ignored} == {CORE_RESOURCE, MEMORY_RESOURCE}
    assert config["profiles"][0]["schedulerName"] == "gpulet-scheduler"


def test_settings_file_matches_the_defaults_it_documents() -> None:
    assert load_config(DEPLOY / "scorer" / "scorer.yaml") == ScorerConfig(host=ScorerConfig().host)


def test_rbac_grants_the_verbs_the_extender_uses() -> None:
    role = one("ClusterRole", "gpulet-scorer")
    granted = {
        (res, verb) for rule in role["rules"] for res in rule["resources"] for verb in rule["verbs"]
    }
    used = {
        ("nodes", "list"),
        ("nodes", "watch"),
        ("pods", "list"),
        ("pods", "watch"),
        ("pods", "get"),
        ("pods", "patch"),
        ("bindings", "create"),
        ("pods/binding", "create"),
    }
    assert granted == used
    binding = one("ClusterRoleBinding", "gpulet-scorer")
    account = one("ServiceAccount", "gpulet-scorer")
    assert binding["subjects"][0]["name"] == account["metadata"]["name"]
    deployment = one("Deployment", "gpulet-scorer")
    assert deployment["spec"]["replicas"] == 1  # the assume cache is per process
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "gpulet-scorer"


def test_kustomization_names_every_manifest() -> None:
    (kustomization,) = documents(DEPLOY / "kustomization.yaml")
    listed = set(kustomization["resources"]) | {
        f for g in kustomization["configMapGenerator"] for f in g["files"]
    }
    on_disk = {str(p.relative_to(DEPLOY)) for p in manifests()} - {"kustomization.yaml"}
    assert listed == on_disk
    generated = {g["name"] for g in kustomization["configMapGenerator"]}
    mounted = {
        v["configMap"]["name"]
        for name in ("gpulet-scorer", "gpulet-scheduler")
        for v in one("Deployment", name)["spec"]["template"]["spec"]["volumes"]
    }
    assert mounted == generated
