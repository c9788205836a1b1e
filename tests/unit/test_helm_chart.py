"""The Helm chart (deploy/helm/gpulet): its values and schema, and the chart rendered by Helm's
engine, equal to what kustomize renders from deploy/ for each layout (`extender.layout`:
sidecar, deploy/; service, deploy/extender-service/), with the service layout's certificates
made by cert-manager or by the chart itself."""

from __future__ import annotations

import copy
import re
import socket
import ssl
import threading
from base64 import b64decode
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import jsonschema
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_private_key,
)
from cryptography.x509.oid import ExtendedKeyUsageOID

from gpulet.httpd import TLSFiles, server_context
from gpulet.kube.crd import node_topology_crd
from scorer.config import load_config
from tests.deploy import (
    CHART,
    DEPLOY,
    agent_container,
    agent_flags,
    agent_pod,
    documents,
    key,
    kustomize,
    needs_helm,
    normalised,
    one,
    render,
)
from tests.unit.test_deploy_manifests import CERT_MANAGER, K8S_VERSIONS, SCHEDULER_CONFIG_SCHEMA

try:
    import helm_python
except ImportError:  # pragma: no cover - a platform the wheel is not built for
    helm_python = None  # type: ignore[assignment]

Doc = dict[str, Any]

#: The chart's values for each way of installing, and the kustomization it must equal.
#: "service-own-tls" is the service layout with the chart's own certificates: kustomize's
#: service layout less cert-manager's objects, plus two Secrets.
VARIANTS: dict[str, tuple[tuple[str, ...], str]] = {
    "sidecar": ((), "sidecar"),
    "service-cert-manager": (
        ("extender.layout=service", "extender.tls.certManager=true"),
        "service",
    ),
    "service-own-tls": (("extender.layout=service",), "service"),
}
#: Kinds without a namespace. kustomize gives the admission policies the overlay's namespace
#: anyway (it does not know their kinds as cluster-scoped); the API server drops it.
CLUSTER_SCOPED = {
    "CustomResourceDefinition",
    "ClusterRole",
    "ClusterRoleBinding",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
}
#: The Secrets the service layout's extender and kube-scheduler use, made by the chart or by
#: cert-manager (the same names and files either way).
TLS_SECRETS = ("gpulet-scorer-tls", "gpulet-scheduler-client")


# --- the Helm chart, without helm -------------------------------------------------------------


def values() -> Doc:
    (doc,) = documents(CHART / "values.yaml")
    return doc


def values_schema() -> Doc:
    schema: Doc = yaml.safe_load((CHART / "values.schema.json").read_text())
    return schema


def templates() -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted((CHART / "templates").iterdir())}


def containers(docs: list[Doc], kind: str, name: str) -> dict[str, Doc]:
    spec = one(docs, kind, name)["spec"]["template"]["spec"]
    return {c["name"]: c for c in spec["containers"]}


def test_chart_metadata() -> None:
    (chart,) = documents(CHART / "Chart.yaml")
    assert (chart["apiVersion"], chart["name"], chart["version"], chart["appVersion"]) == (
        "v2",
        "gpulet",
        "0.1.0",
        "0.1.0",
    )
    image = values()["image"]
    expected = f"{image['repository']}:{image['tag'] or chart['appVersion']}"
    sidecar, service = kustomize("sidecar"), kustomize("service")
    assert agent_container(sidecar)["image"] == agent_container(service)["image"] == expected
    assert containers(sidecar, "Deployment", "gpulet-scheduler")["extender"]["image"] == expected
    assert containers(service, "Deployment", "gpulet-scorer")["scorer"]["image"] == expected


def test_values_follow_their_schema() -> None:
    schema = values_schema()
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.validate(values(), schema)
    bad: list[tuple[str, Doc]] = [
        ("agent", {"enforce": "kil"}),
        ("agent", {"metricsPort": 0}),
        ("agent", {"legacyAnnotations": "delete"}),
        ("agent", {"legacyAnnotations": None}),
        ("agent", {"heartbeatSeconds": 0}),
        ("agent", {"heartbeatSeconds": "20"}),
        ("extender", {"layout": "daemonset"}),
        ("extender", {"layout": ""}),
        ("extender", {"tls": {"certManager": "yes"}}),
        ("extender", {"tls": {"certmanager": True}}),
        # The old switch for "no gpulet-scheduler": refused, not ignored (extender.layout).
        ("scheduler", {"enabled": False}),
        # Prometheus's side (docs/monitoring.md): switches, a duration, whole subjects.
        ("monitoring", {"serviceMonitor": {"enabled": "true", "labels": {}, "interval": "30s"}}),
        ("monitoring", {"serviceMonitor": {"enabled": True, "labels": {}, "interval": "30"}}),
        ("monitoring", {"metricsReaders": [{"kind": "ServiceAccount", "name": "prometheus"}]}),
        ("monitoring", {"grafanaDashboard": {"enabled": True}}),
    ]
    for part, change in bad:
        wrong = values()
        wrong[part].update(change)
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(wrong, schema)
    # The extender's old group of values, now extender.*.
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**values(), "scorer": {"resources": {}}}, schema)


def test_chart_defaults_are_the_kustomize_layouts() -> None:
    v = values()
    assert v["extender"]["layout"] == "sidecar"
    assert v["extender"]["tls"]["certManager"] is False
    sidecar, service = kustomize("sidecar"), kustomize("service")
    for docs in (sidecar, service):
        args = agent_flags(docs)
        pod, container = agent_pod(docs), agent_container(docs)
        slots = (int(args["--gpu-slots"]), int(args["--rdma-slots"]))
        assert (v["gpuSlots"], v["rdmaSlots"]) == slots
        agent = v["agent"]
        assert agent["enforce"] == args["--enforce"]
        assert agent["metricsPort"] == int(args["--metrics-port"])
        assert agent["nodeSelector"] == pod["nodeSelector"]
        assert agent["tolerations"] == pod["tolerations"]
        assert agent["runtimeClassName"] == pod["runtimeClassName"]
        assert agent["priorityClassName"] == pod["priorityClassName"]
        assert agent["resources"] == container["resources"]
        # The agent's own defaults: a heartbeat every 20 s, the old annotations removed.
        assert agent["heartbeatSeconds"] is None and "--heartbeat-seconds" not in args
        assert agent["legacyAnnotations"] == "remove" and "--legacy-annotations" not in args
        settings = yaml.safe_load(one(docs, "ConfigMap", "gpulet-scorer")["data"]["scorer.yaml"])
        assert (settings["gpuSlots"], settings["rdmaSlots"]) == slots
    # The extender: its container in either layout; its own pod in the service layout.
    extender = v["extender"]
    beside = containers(sidecar, "Deployment", "gpulet-scheduler")
    alone = one(service, "Deployment", "gpulet-scorer")["spec"]["template"]["spec"]
    assert extender["resources"] == beside["extender"]["resources"]
    assert extender["resources"] == alone["containers"][0]["resources"]
    assert extender["priorityClassName"] == alone["priorityClassName"]
    assert extender["tolerations"] == alone.get("tolerations", [])
    # gpulet-scheduler, the sidecar layout's.
    scheduler = one(sidecar, "Deployment", "gpulet-scheduler")["spec"]
    pod = scheduler["template"]["spec"]
    assert v["scheduler"]["replicas"] == scheduler["replicas"]
    assert v["scheduler"]["image"] == beside["kube-scheduler"]["image"]
    assert v["scheduler"]["resources"] == beside["kube-scheduler"]["resources"]
    assert v["scheduler"]["priorityClassName"] == pod["priorityClassName"]
    assert v["scheduler"]["tolerations"] == pod.get("tolerations", [])
    (config,) = documents(DEPLOY / "scheduler" / "kube-scheduler-config.yaml")
    (stanza,) = documents(DEPLOY / "extender-service" / "kube-scheduler-extender.yaml")
    assert v["scheduler"]["weight"] == config["extenders"][0]["weight"]
    assert v["scheduler"]["weight"] == stanza["extenders"][0]["weight"]


def leaves(tree: Doc, prefix: str = "") -> set[str]:
    found: set[str] = set()
    for k, v in tree.items():
        path = f"{prefix}.{k}"
        found |= leaves(v, path) if isinstance(v, dict) and v else {path}
    return found


def test_templates_use_every_value_and_only_values_that_exist() -> None:
    used = {m for text in templates().values() for m in re.findall(r"\.Values((?:\.\w+)+)", text)}
    defined = leaves(values())
    assert used, "no .Values in the templates"
    # Each reference names a value (or a group of them) that values.yaml defines...
    for ref in used:
        assert any(d == ref or d.startswith(ref + ".") for d in defined), ref
    # ...and each value is read somewhere: none is a dead option.
    for leaf in defined:
        assert any(leaf == ref or leaf.startswith(ref + ".") for ref in used), leaf


def test_template_blocks_are_closed() -> None:
    for name, text in templates().items():
        actions = re.findall(r"\{\{-?\s*(if|range|with|define|block|else|end)\b", text)
        depth = 0
        for action in actions:
            depth += {"end": -1, "else": 0}.get(action, 1)
            assert depth >= 0, f"{name}: an end without a block"
        assert depth == 0, f"{name}: a block without its end"


# --- the Helm chart, rendered ---------------------------------------------------------------


def comparable(doc: Doc) -> Doc:
    """normalised(), less what differs between two renderings of the same object: the
    namespace kustomize gives cluster-scoped kinds, and the whitespace of CEL. (kustomize's
    YAML round trip adds a blank line before each more-indented line of a folded `>-`
    scalar; CEL does not care, and the API server gets the expressions either way.)"""
    doc = normalised(doc)
    if doc["kind"] in CLUSTER_SCOPED:
        doc["metadata"].pop("namespace", None)
    if doc["kind"] == "ValidatingAdmissionPolicy":
        spec = doc["spec"]
        for entry in spec.get("variables", []) + spec.get("matchConditions", []):
            entry["expression"] = " ".join(entry["expression"].split())
        for validation in spec["validations"]:
            for field in ("expression", "messageExpression", "message"):
                if field in validation:
                    validation[field] = " ".join(validation[field].split())
    return doc


def renamed(tree: Any, old: str, new: str) -> Any:
    """`tree` with `old` replaced by `new` in every string (keys and values)."""
    if isinstance(tree, dict):
        return {renamed(k, old, new): renamed(v, old, new) for k, v in tree.items()}
    if isinstance(tree, list):
        return [renamed(v, old, new) for v in tree]
    if isinstance(tree, str):
        return tree.replace(old, new)
    return tree


def expected(layout: str, namespace: str = "kube-system") -> dict[str, Doc]:
    """kustomize's objects for `layout`, comparable, as installed in `namespace`: every
    kube-system in them is the namespace's (object namespaces, accounts, usernames, DNS names,
    the lease's) but the Role extension-apiserver-authentication-reader's, which is
    kube-system's wherever gpulet is."""
    docs = {key(d): comparable(d) for d in kustomize(layout)}
    if namespace != "kube-system":
        docs = {k: renamed(d, "kube-system", namespace) for k, d in docs.items()}
        reader = docs.get("RoleBinding/gpulet-scheduler-authentication-reader")
        if reader is not None:
            reader["metadata"]["namespace"] = "kube-system"
    return docs


def validate(docs: list[Doc]) -> None:
    for doc in docs:
        if doc["apiVersion"] == CERT_MANAGER:  # in no Kubernetes schema
            continue
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)


def own_tls(docs: list[Doc]) -> dict[str, Doc]:
    """The chart's own certificate Secrets, by name."""
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == "Secret"}


@needs_helm
def test_the_chart_refuses_values_its_schema_does_not_allow() -> None:
    with pytest.raises(Exception, match="gpuSlots"):
        render("gpuSlots=0")
    with pytest.raises(Exception, match="layout"):
        render("extender.layout=daemonset")
    with pytest.raises(Exception, match="enabled"):
        render("scheduler.enabled=false")


@needs_helm
@pytest.mark.parametrize("namespace", ["kube-system", "gpu-system"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_chart_renders_what_kustomize_renders(variant: str, namespace: str) -> None:
    sets, layout = VARIANTS[variant]
    rendered = render(*sets, namespace=namespace)
    validate(rendered)
    for doc in rendered:
        if doc["kind"] in CLUSTER_SCOPED:
            assert "namespace" not in doc["metadata"], key(doc)
    want = expected(layout, namespace)
    got = {key(d): comparable(d) for d in rendered}
    if variant == "service-own-tls":
        want = {k: d for k, d in want.items() if d["apiVersion"] != CERT_MANAGER}
        secrets = own_tls(rendered)
        assert sorted(secrets) == sorted(TLS_SECRETS)
        got = {k: d for k, d in got.items() if d["kind"] != "Secret"}
    assert len(got) == len(rendered) - (len(TLS_SECRETS) if variant == "service-own-tls" else 0)
    assert sorted(got) == sorted(want)
    for name, doc in got.items():
        assert doc == want[name], name
    if layout == "sidecar":
        config = one(rendered, "ConfigMap", "gpulet-scheduler-config")["data"]
        jsonschema.validate(
            yaml.safe_load(config["kube-scheduler-config.yaml"]), SCHEDULER_CONFIG_SCHEMA
        )


@needs_helm
def test_the_chart_upgrades_the_crd_and_keeps_it_on_uninstall() -> None:
    """The CRD is a template, not in crds/ (which Helm never upgrades: a newer agent's fields
    would be pruned by an old schema), kept by `helm uninstall` (which would otherwise delete
    every NodeTopology with it); and it is the CRD gpulet.kube.crd builds."""
    assert not (CHART / "crds").exists()
    (crd,) = [d for d in render() if d["kind"] == "CustomResourceDefinition"]
    assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    assert crd["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
    want = node_topology_crd()
    del want["metadata"]["labels"]
    assert normalised(crd) == want


@needs_helm
@pytest.mark.parametrize("variant", VARIANTS)
def test_agent_heartbeat_and_legacy_annotation_values_reach_its_flags(variant: str) -> None:
    from click.testing import CliRunner  # noqa: PLC0415 - only this test needs it

    from gpulet.cli import main  # noqa: PLC0415
    from gpulet.cli.agent import agent  # noqa: PLC0415

    assert isinstance(agent, click.Group)

    sets, _ = VARIANTS[variant]
    rendered = render(*sets, "agent.heartbeatSeconds=30", "agent.legacyAnnotations=keep")
    args = agent_flags(rendered)
    assert (args["--heartbeat-seconds"], args["--legacy-annotations"]) == ("30", "keep")
    # ...as flags `gpulet agent run` takes, with values it takes.
    argv = [a.replace("$(NODE_NAME)", "node-1") for a in agent_container(rendered)["args"]]
    result = CliRunner().invoke(main, [*argv, "--help"])
    assert result.exit_code == 0, result.output
    options = {p.opts[0]: p for p in agent.commands["run"].params}
    assert options["--heartbeat-seconds"].type.convert("30", None, None) == 30.0
    assert options["--legacy-annotations"].type.convert("keep", None, None) == "keep"


# --- the service layout's own certificates --------------------------------------------------


def pem(secret: Doc, file: str) -> bytes:
    return b64decode(secret["data"][file])


def handshake(server: ssl.SSLContext, client: ssl.SSLContext, hostname: str) -> Doc:
    """A TLS handshake between the two contexts, over a socket pair; the client certificate
    as the server saw it."""
    server_end, client_end = socket.socketpair()
    server_end.settimeout(10)
    client_end.settimeout(10)
    seen: Doc = {}

    def serve() -> None:
        try:
            with server.wrap_socket(server_end, server_side=True) as tls:
                seen["peer"] = tls.getpeercert()
                tls.sendall(b"ok")
        except (ssl.SSLError, OSError) as e:
            seen["error"] = e

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    with client.wrap_socket(client_end, server_hostname=hostname) as tls:
        assert tls.recv(2) == b"ok"
    thread.join(10)
    assert "error" not in seen, seen.get("error")
    return seen


def usages(cert: x509.Certificate) -> set[x509.ObjectIdentifier]:
    return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def public(key_or_cert: Any) -> bytes:
    return bytes(
        key_or_cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    )


@needs_helm
@pytest.mark.parametrize("namespace", ["kube-system", "gpu-system"])
def test_the_chart_makes_certificates_that_chain(namespace: str, tmp_path: Path) -> None:
    rendered = render("extender.layout=service", namespace=namespace)
    secrets = own_tls(rendered)
    server, client = (secrets[n] for n in TLS_SECRETS)
    for secret in (server, client):
        assert secret["type"] == "kubernetes.io/tls"
        assert set(secret["data"]) == {"tls.crt", "tls.key", "ca.crt"}
        assert secret["metadata"]["namespace"] == namespace
    # One CA in both, a CA indeed.
    assert server["data"]["ca.crt"] == client["data"]["ca.crt"]
    ca = x509.load_pem_x509_certificate(pem(server, "ca.crt"))
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    now = datetime.now(UTC)
    host = f"gpulet-scorer.{namespace}.svc"
    serving = x509.load_pem_x509_certificate(pem(server, "tls.crt"))
    client_cert = x509.load_pem_x509_certificate(pem(client, "tls.crt"))
    for cert, secret in ((serving, server), (client_cert, client)):
        cert.verify_directly_issued_by(ca)
        assert cert.issuer == ca.subject
        assert cert.not_valid_before_utc <= now < cert.not_valid_after_utc
        key_pem = pem(secret, "tls.key")
        assert public(load_pem_private_key(key_pem, password=None)) == public(cert)
    names = serving.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert host in names.get_values_for_type(x509.DNSName)
    assert ExtendedKeyUsageOID.SERVER_AUTH in usages(serving)
    assert ExtendedKeyUsageOID.CLIENT_AUTH in usages(client_cert)
    # The extender's own server context (mTLS, as `scorer serve` makes it from its Secret)
    # and a client with kube-scheduler's files: the handshake succeeds for the Service's name.
    files: dict[str, Path] = {}
    for name, secret in (("server", server), ("client", client)):
        for file in secret["data"]:
            files[f"{name}/{file}"] = path = tmp_path / name / file
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(pem(secret, file))
    served = server_context(
        TLSFiles(files["server/tls.crt"], files["server/tls.key"], files["server/ca.crt"])
    )
    caller = ssl.create_default_context(cafile=files["client/ca.crt"])
    caller.load_cert_chain(files["client/tls.crt"], files["client/tls.key"])
    seen = handshake(served, caller, host)
    assert dict(field[0] for field in seen["peer"]["subject"])["commonName"] == (
        "gpulet-scheduler-client"
    )


@needs_helm
def test_the_service_layout_mounts_the_certificate_its_settings_name(tmp_path: Path) -> None:
    for sets, _ in (VARIANTS["service-own-tls"], VARIANTS["service-cert-manager"]):
        rendered = render(*sets)
        settings = tmp_path / "scorer.yaml"
        settings.write_text(one(rendered, "ConfigMap", "gpulet-scorer")["data"]["scorer.yaml"])
        config = load_config(settings)
        pod = one(rendered, "Deployment", "gpulet-scorer")["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        (mount,) = [m for m in container["volumeMounts"] if m["name"] == "tls"]
        (volume,) = [v for v in pod["volumes"] if v["name"] == "tls"]
        assert volume["secret"]["secretName"] == "gpulet-scorer-tls"
        # The files of the Secret (as cert-manager names them), where it is mounted.
        mounted = Path(mount["mountPath"])
        assert (config.tls_cert_file, config.tls_key_file, config.client_ca_file) == (
            mounted / "tls.crt",
            mounted / "tls.key",
            mounted / "ca.crt",
        )
        assert [p["containerPort"] for p in container["ports"]] == [config.port, config.health_port]


# --- values reach every part they are about -------------------------------------------------


@needs_helm
@pytest.mark.parametrize("variant", VARIANTS)
def test_chart_values_change_agent_and_extender_together(variant: str, tmp_path: Path) -> None:
    sets, layout = VARIANTS[variant]
    rendered = render(*sets, "agent.enforce=kill", "gpuSlots=50", "rdmaSlots=7")
    args = agent_flags(rendered)
    assert (args["--enforce"], args["--gpu-slots"], args["--rdma-slots"]) == ("kill", "50", "7")
    assert agent_container(rendered)["securityContext"]["capabilities"]["add"] == ["KILL"]
    settings = tmp_path / "scorer.yaml"
    settings.write_text(one(rendered, "ConfigMap", "gpulet-scorer")["data"]["scorer.yaml"])
    config = load_config(settings)
    assert (config.gpu_slots, config.rdma_slots) == (50, 7)
    # The extender's pod restarts on new settings (Helm's checksum annotation).
    workload = "gpulet-scheduler" if layout == "sidecar" else "gpulet-scorer"
    before = one(render(*sets), "Deployment", workload)["spec"]["template"]["metadata"]
    after = one(rendered, "Deployment", workload)["spec"]["template"]["metadata"]
    assert before["annotations"] != after["annotations"]


@needs_helm
def test_scheduler_values_reach_gpulet_scheduler() -> None:
    rendered = render(
        "scheduler.weight=7",
        "scheduler.replicas=3",
        "extender.resources.limits.memory=3Gi",
        "scheduler.image=registry.example.com/kube-scheduler:v1.32.0",
    )
    config = one(rendered, "ConfigMap", "gpulet-scheduler-config")["data"]
    scheduler_config = yaml.safe_load(config["kube-scheduler-config.yaml"])
    assert scheduler_config["extenders"][0]["weight"] == 7
    deployment = one(rendered, "Deployment", "gpulet-scheduler")
    assert deployment["spec"]["replicas"] == 3
    pod = containers(rendered, "Deployment", "gpulet-scheduler")
    assert pod["kube-scheduler"]["image"] == "registry.example.com/kube-scheduler:v1.32.0"
    assert pod["extender"]["resources"]["limits"]["memory"] == "3Gi"
    # The service layout has no gpulet-scheduler, whatever scheduler.* says.
    service = render("extender.layout=service", "scheduler.replicas=3")
    assert not [d for d in service if d["kind"] != "Secret" and "scheduler" in key(d).lower()]


# --- the notes: the service layout's stanza for the cluster's kube-scheduler -----------------

needs_helm_python = pytest.mark.skipif(
    helm_python is None, reason="helm-python-sdk is not installed (the notes need its render)"
)


def notes(*sets: str, namespace: str = "kube-system") -> str:
    assert helm_python is not None
    chart = helm_python.Chart.load(CHART)
    given = helm_python.parse_set_string(",".join(sets)) if sets else {}
    rendered = chart.render(given, name="gpulet", namespace=namespace, is_install=True)
    (text,) = [t for path, t in rendered.items() if path.endswith("/NOTES.txt")]
    return text


@needs_helm_python
@pytest.mark.parametrize("namespace", ["kube-system", "gpu-system"])
def test_the_notes_give_the_cluster_scheduler_its_stanza(namespace: str) -> None:
    text = notes("extender.layout=service", "scheduler.weight=3", namespace=namespace)
    printed = yaml.safe_load(text[text.index("extenders:") :])
    (stanza,) = documents(DEPLOY / "extender-service" / "kube-scheduler-extender.yaml")
    want = renamed(copy.deepcopy(stanza["extenders"]), "kube-system", namespace)
    want[0]["weight"] = 3
    assert printed["extenders"] == want
    jsonschema.validate({**stanza, "extenders": printed["extenders"]}, SCHEDULER_CONFIG_SCHEMA)
    assert f"kubectl -n {namespace} get secret gpulet-scheduler-client" in text
    assert "schedulerName: gpulet-scheduler" in notes()
