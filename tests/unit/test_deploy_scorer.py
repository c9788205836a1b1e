"""The extender in each layout, as kustomize renders it: kube-scheduler calls it where it
listens and nobody else reaches it (loopback beside kube-scheduler, or HTTPS with a client
certificate behind a Service); its settings load; its account is granted exactly the verbs it
uses, and that account is the one the admission policies name; every file in deploy/ is part
of a layout; each pod's ports are the ones its NetworkPolicy admits."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

from gpulet.api.resources import MANAGED_RESOURCES
from scorer.config import ScorerConfig, load_config
from tests.deploy import DEPLOY, LAYOUTS, documents, kustomize, one

Doc = dict[str, Any]

#: The account the extender runs as, in each layout.
ACCOUNT = {"sidecar": "gpulet-scheduler", "service": "gpulet-scorer"}


def settings(docs: list[Doc], tmp_path: Path) -> ScorerConfig:
    """The extender's settings as its pod reads them (the ConfigMap gpulet-scorer)."""
    path = tmp_path / "scorer.yaml"
    path.write_text(one(docs, "ConfigMap", "gpulet-scorer")["data"]["scorer.yaml"])
    return load_config(path)


def extender_stanza(config: Doc) -> Doc:
    (extender,) = config["extenders"]
    return dict(extender)


def pod_spec(docs: list[Doc], kind: str, name: str) -> Doc:
    spec: Doc = one(docs, kind, name)["spec"]["template"]["spec"]
    return spec


def extender_container(docs: list[Doc], layout: str) -> Doc:
    name = "gpulet-scheduler" if layout == "sidecar" else "gpulet-scorer"
    (container,) = [
        c
        for c in pod_spec(docs, "Deployment", name)["containers"]
        if c.get("args", [])[:2] == ["scorer", "serve"]
    ]
    return dict(container)


def check_the_stanza(extender: Doc) -> None:
    verbs = ("filterVerb", "prioritizeVerb", "bindVerb", "preemptVerb")
    assert tuple(extender[v] for v in verbs) == ("filter", "prioritize", "bind", "preempt")
    assert extender["nodeCacheCapable"] is True and extender["weight"] > 0
    assert extender["ignorable"] is False
    managed = {r["name"]: r["ignoredByScheduler"] for r in extender["managedResources"]}
    assert set(managed) == set(MANAGED_RESOURCES)
    # Every one counted by kube-scheduler too: kubelet's device plugin advertises gpu and
    # rdma, the agent the aggregates of gpu-core and gpu-memory (its preemption needs them).
    assert not any(managed.values())


def test_the_sidecar_extender_is_reached_by_its_kube_scheduler_only(tmp_path: Path) -> None:
    docs = kustomize("sidecar")
    config = yaml.safe_load(
        one(docs, "ConfigMap", "gpulet-scheduler-config")["data"]["kube-scheduler-config.yaml"]
    )
    assert config["profiles"][0]["schedulerName"] == "gpulet-scheduler"
    assert config["leaderElection"]["leaderElect"] is True
    extender = extender_stanza(config)
    check_the_stanza(extender)
    url = urlparse(extender["urlPrefix"])
    found = settings(docs, tmp_path)
    # kube-scheduler calls it over the pod's loopback, where it alone listens...
    assert (url.scheme, url.hostname, url.port) == ("http", "127.0.0.1", found.port)
    assert found.host == "127.0.0.1"
    # ...and the port open to the pod network serves the probes, not the verbs.
    container = extender_container(docs, "sidecar")
    ports = {p["containerPort"] for p in container["ports"]}
    assert found.port not in ports and ports == {found.health_port}
    for probe in ("readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] == "/healthz" and get["port"] == "probes"
    assert not [d for d in docs if d["kind"] == "Service" and "gpulet-scheduler" in str(d)]


def test_the_service_extender_answers_only_client_certificates(tmp_path: Path) -> None:
    docs = kustomize("service")
    assert not [d for d in docs if d["metadata"]["name"].startswith("gpulet-scheduler-config")]
    assert not [d for d in docs if key_is(d, "Deployment", "gpulet-scheduler")]
    (config,) = documents(DEPLOY / "extender-service" / "kube-scheduler-extender.yaml")
    extender = extender_stanza(config)
    check_the_stanza(extender)
    found = settings(docs, tmp_path)
    url = urlparse(extender["urlPrefix"])
    service = one(docs, "Service", "gpulet-scorer")
    (port,) = service["spec"]["ports"]
    assert url.scheme == "https" and extender["enableHTTPS"] is True
    assert extender["tlsConfig"]["insecure"] is False
    assert {"caFile", "certFile", "keyFile"} <= set(extender["tlsConfig"])
    assert url.hostname == f"gpulet-scorer.{service['metadata']['namespace']}.svc"
    assert url.port == port["port"] == found.port
    # The extender serves TLS with the serving certificate for that name, and requires a
    # client certificate from the CA that signed kube-scheduler's.
    assert found.tls_cert_file and found.tls_key_file and found.client_ca_file
    container = extender_container(docs, "service")
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec(docs, "Deployment", "gpulet-scorer")["volumes"]}
    for path in (found.tls_cert_file, found.tls_key_file, found.client_ca_file):
        directory = str(Path(path).parent)
        secret = volumes[mounts[directory]]["secret"]["secretName"]
        assert secret == "gpulet-scorer-tls"
    serving = one(docs, "Certificate", "gpulet-scorer-tls")["spec"]
    assert url.hostname in serving["dnsNames"] and "server auth" in serving["usages"]
    client = one(docs, "Certificate", "gpulet-scheduler-client")["spec"]
    assert "client auth" in client["usages"]
    assert serving["issuerRef"] == client["issuerRef"]
    assert one(docs, "Deployment", "gpulet-scorer")["spec"]["replicas"] == 1


def key_is(doc: Doc, kind: str, name: str) -> bool:
    return bool(doc["kind"] == kind and doc["metadata"]["name"] == name)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_extenders_account_has_the_verbs_it_uses_and_the_policies_name_it(
    layout: str,
) -> None:
    docs = kustomize(layout)
    role = one(docs, "ClusterRole", "gpulet-extender")
    granted = {
        (res, verb) for rule in role["rules"] for res in rule["resources"] for verb in rule["verbs"]
    }
    assert granted == {
        ("nodes", "list"),
        ("nodes", "watch"),
        ("nodetopologies", "list"),
        ("nodetopologies", "watch"),
        ("pods", "list"),
        ("pods", "watch"),
        ("pods", "get"),
        ("pods", "patch"),
        ("pods/binding", "create"),
    }
    # The heartbeats: the Leases of its own namespace, read only.
    heartbeats = one(docs, "Role", "gpulet-extender-heartbeats")
    assert heartbeats["metadata"]["namespace"] == "kube-system"
    assert heartbeats["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["list", "watch"]}
    ]
    account = ACCOUNT[layout]
    subject = {"kind": "ServiceAccount", "name": account, "namespace": "kube-system"}
    for kind, name in (
        ("ClusterRoleBinding", "gpulet-extender"),
        ("RoleBinding", "gpulet-extender-heartbeats"),
    ):
        binding = one(docs, kind, name)
        assert binding["subjects"] == [subject], name
        assert binding["roleRef"]["name"] == name
    one(docs, "ServiceAccount", account)
    name = "gpulet-scheduler" if layout == "sidecar" else "gpulet-scorer"
    assert pod_spec(docs, "Deployment", name)["serviceAccountName"] == account
    username = f"system:serviceaccount:kube-system:{account}"
    pods = one(docs, "ValidatingAdmissionPolicy", "gpulet-pods")["spec"]
    extender_variable = {v["name"]: v["expression"] for v in pods["variables"]}["extender"]
    assert extender_variable == f"'{username}'"
    (condition,) = one(docs, "ValidatingAdmissionPolicy", "gpulet-extender")["spec"][
        "matchConditions"
    ]
    assert condition["expression"] == f"request.userInfo.username == '{username}'"


def test_settings_files_match_the_defaults_but_where_they_say() -> None:
    defaults = ScorerConfig()
    sidecar = load_config(DEPLOY / "extender" / "scorer.yaml")
    assert sidecar == ScorerConfig(host="127.0.0.1", health_port=8889)
    service = load_config(DEPLOY / "extender-service" / "scorer.yaml")
    assert (service.gpu_slots, service.rdma_slots) == (defaults.gpu_slots, defaults.rdma_slots)
    assert service.port == 8443 and service.health_port == 8889


def test_every_file_in_deploy_is_part_of_a_layout() -> None:
    """A manifest no kustomization names is one nobody applies."""

    def named(directory: Path, seen: set[Path]) -> None:
        (k,) = documents(directory / "kustomization.yaml")
        seen.add(directory / "kustomization.yaml")
        for entry in k.get("resources", []) + k.get("components", []):
            target = (directory / entry).resolve()
            if target.is_dir():
                named(target, seen)
            else:
                seen.add(target)
        for generator in k.get("configMapGenerator", []):
            seen.update((directory / f).resolve() for f in generator["files"])

    seen: set[Path] = set()
    for directory in LAYOUTS.values():
        named(directory.resolve(), seen)
    on_disk = {
        p.resolve() for p in DEPLOY.rglob("*.yaml") if p.relative_to(DEPLOY).parts[0] != "helm"
    }
    # The stanza for the cluster's own kube-scheduler is read by a person, not applied.
    assert on_disk - seen == {(DEPLOY / "extender-service/kube-scheduler-extender.yaml").resolve()}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_pods_ports_are_those_its_network_policy_admits(layout: str) -> None:
    docs = kustomize(layout)
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    workloads = [d for d in docs if d["kind"] in ("Deployment", "DaemonSet")]
    assert workloads
    for workload in workloads:
        labels = workload["spec"]["template"]["metadata"]["labels"]
        selecting = [
            p for p in policies if p["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
        ]
        assert selecting, f"no NetworkPolicy selects {workload['metadata']['name']}"
        admitted = {
            port["port"]
            for p in selecting
            for rule in p["spec"]["ingress"]
            for port in rule["ports"]
        }
        spec = workload["spec"]["template"]["spec"]
        opened = {p["containerPort"] for c in spec["containers"] for p in c.get("ports", [])}
        if workload["metadata"]["name"] == "gpulet-scheduler":
            opened.add(10259)  # kube-scheduler's own secure port (it declares none)
        assert admitted == opened, workload["metadata"]["name"]
