"""The operator's kit (docs/monitoring.md): the Grafana dashboard in deploy/monitoring/, checked
against what the exporters really export (the agent's collector on a simulated node, read
through its access check as Prometheus reads it, and the extender's /metrics), and the
chart's Prometheus Operator objects and dashboard ConfigMap, which only its values turn on."""

from __future__ import annotations

import http.client
import json
import re
import subprocess
from collections.abc import Iterator
from typing import Any

import jsonschema
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from kubernetes.client import ApiClient
from prometheus_client.parser import text_string_to_metric_families

from agent.access import KubernetesAccess
from agent.metrics import AgentCollector, BatchParts, MetricsServer
from gpulet.kube.calls import ReviewCalls
from gpulet.standins.objects import container, pod_object
from tests.deploy import CHART, DEPLOY, key, needs_helm, one, render
from tests.unit import test_agent_path as path
from tests.unit.test_deploy_manifests import K8S_VERSIONS
from tests.unit.test_tenant_region import admitted

cluster = path.cluster

Doc = dict[str, Any]

DASHBOARD = DEPLOY / "monitoring" / "grafana-dashboard.json"
CHART_DASHBOARD = CHART / "files" / "grafana-dashboard.json"
MONITORING_TEMPLATE = CHART / "templates" / "monitoring.yaml"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
#: The chart's scraper, as the API server names its ServiceAccount.
SCRAPER = "system:serviceaccount:kube-system:gpulet-metrics-scraper"
SCRAPER_TOKEN = "scraper-token-3c9d41"
#: Labels Prometheus gives every target of a ServiceMonitor or PodMonitor.
TARGET_LABELS = {"job", "instance", "namespace", "pod", "service", "endpoint"}
ENABLED = (
    "monitoring.serviceMonitor.enabled=true",
    "monitoring.grafanaDashboard.enabled=true",
)

_DATASOURCE_SCHEMA = {"const": DATASOURCE}
_GRID = {
    "type": "object",
    "required": ["h", "w", "x", "y"],
    "properties": {
        "h": {"type": "integer", "minimum": 1},
        "w": {"type": "integer", "minimum": 1, "maximum": 24},
        "x": {"type": "integer", "minimum": 0, "maximum": 23},
        "y": {"type": "integer", "minimum": 0},
    },
}
#: What Grafana needs of a dashboard to import it, and what this one promises: every panel
#: queries the `datasource` variable's Prometheus with PromQL.
DASHBOARD_SCHEMA: Doc = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "type": "object",
    "required": ["title", "uid", "schemaVersion", "panels", "templating", "time"],
    "properties": {
        "title": {"type": "string", "minLength": 1},
        "uid": {"type": "string", "pattern": "^[a-zA-Z0-9_-]{1,40}$"},
        "schemaVersion": {"type": "integer", "minimum": 39},
        "templating": {
            "type": "object",
            "required": ["list"],
            "properties": {
                "list": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["name", "type"],
                        "properties": {"name": {"type": "string", "pattern": "^[a-z]+$"}},
                    },
                }
            },
        },
        "panels": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["id", "type", "title", "gridPos"],
                "properties": {
                    "id": {"type": "integer", "minimum": 1},
                    "type": {"enum": ["row", "timeseries", "stat", "table"]},
                    "title": {"type": "string", "minLength": 1},
                    "gridPos": _GRID,
                },
                "if": {"properties": {"type": {"const": "row"}}},
                "then": {"not": {"required": ["targets"]}},
                "else": {
                    "required": ["datasource", "targets", "description"],
                    "properties": {
                        "datasource": _DATASOURCE_SCHEMA,
                        "targets": {
                            "type": "array",
                            "minItems": 1,
                            "items": {
                                "type": "object",
                                "required": ["datasource", "expr", "refId"],
                                "properties": {
                                    "datasource": _DATASOURCE_SCHEMA,
                                    "expr": {"type": "string", "minLength": 1},
                                    "refId": {"type": "string", "minLength": 1},
                                    "legendFormat": {"type": "string"},
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}


def dashboard() -> Doc:
    doc: Doc = json.loads(DASHBOARD.read_text())
    return doc


def queries(doc: Doc) -> list[tuple[str, Doc]]:
    """(panel title, target) of every query panel's targets."""
    return [(p["title"], t) for p in doc["panels"] for t in p.get("targets", [])]


def variables(doc: Doc) -> dict[str, Doc]:
    return {v["name"]: v for v in doc["templating"]["list"]}


# --- the dashboard's structure -----------------------------------------------------------------


def test_the_dashboard_is_a_grafana_dashboard_on_the_datasource_variable() -> None:
    doc = dashboard()
    jsonschema.Draft7Validator.check_schema(DASHBOARD_SCHEMA)
    jsonschema.validate(doc, DASHBOARD_SCHEMA)
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for panel in doc["panels"]:
        refs = [t["refId"] for t in panel.get("targets", [])]
        assert len(refs) == len(set(refs)), panel["title"]
    # No two panels take the same cell of the grid, and none runs past its right edge.
    taken: dict[tuple[int, int], str] = {}
    for panel in doc["panels"]:
        g = panel["gridPos"]
        assert g["x"] + g["w"] <= 24, panel["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in taken, (panel["title"], taken.get((x, y)))
                taken[(x, y)] = panel["title"]
    # The variables: a Prometheus data source, then nodes and GPUs read from it.
    found = variables(doc)
    assert found["datasource"]["type"] == "datasource"
    assert found["datasource"]["query"] == "prometheus"
    for name in ("node", "gpu"):
        assert found[name]["type"] == "query"
        assert found[name]["datasource"] == DATASOURCE
        assert "label_values(gpulet_" in found[name]["query"]["query"]
    # Each GPU panel filters on both, each query panel is on the variable's data source.
    exprs = [t["expr"] for _, t in queries(doc)]
    assert any('node=~"$node"' in e and 'uuid=~"$gpu"' in e for e in exprs)
    assert "${datasource}" not in json.dumps(doc).replace('"uid": "${datasource}"', "")


def test_the_chart_carries_the_same_dashboard() -> None:
    assert CHART_DASHBOARD.read_bytes() == DASHBOARD.read_bytes()


# --- what the exporters export ------------------------------------------------------------------

METRIC = re.compile(r"\bgpulet_[a-z0-9_]+\b")
SELECTOR = re.compile(r"\b(gpulet_[a-z0-9_]+)\s*\{([^}]*)\}")
MATCHER = re.compile(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)")
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
LEGEND = re.compile(r"\{\{\s*([a-zA-Z_]\w*)\s*\}\}")
LABEL_VALUES = re.compile(r"label_values\(\s*(gpulet_[a-z0-9_]+)\s*(?:\{[^}]*\})?\s*,\s*(\w+)\s*\)")


def scraped(text: str, exported: dict[str, set[str]]) -> None:
    """Each series name in `text` (Prometheus's text format) and the labels it carries."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            exported.setdefault(sample.name, set()).update(sample.labels)


def get(port: int, url: str, token: str | None = None) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", url, headers={"Authorization": f"Bearer {token}"} if token else {})
    reply = conn.getresponse()
    text = reply.read().decode()
    conn.close()
    return reply.status, text


def target_labels(kind: str) -> set[str]:
    """The labels Prometheus adds to the series of the chart's monitor of `kind`: its own, and
    those the monitor's relabelings write."""
    (doc,) = [d for d in MONITORING_TEMPLATE.read_text().split("\n---\n") if f"kind: {kind}" in d]
    return TARGET_LABELS | set(re.findall(r"targetLabel:\s*(\w+)", doc))


@pytest.fixture
def exported(cluster: path.Cluster) -> Iterator[dict[str, set[str]]]:
    """Every series the agent and the extender export, with its labels, as Prometheus scrapes
    them: a node with two slices (one over its cap, whose process the backstop kills), read
    with the chart's scraper's token (allowed /metrics, as gpulet-metrics-reader allows it) and
    once without a token (refused and counted); and the extender that placed both."""
    cluster.api.add_token(SCRAPER_TOKEN, SCRAPER, groups=["system:serviceaccounts"])
    cluster.api.allow(SCRAPER, "/metrics")
    tenant, greedy = admitted(cluster, "tenant"), admitted(cluster, "greedy")
    # A batch slice, once the agent has published the room its idle GPUs leave.
    cluster.nvml_shows()
    view = cluster.scorer.server.extender.view
    path.wait_for(lambda: bool(view.state(path.NODE).idle))
    offline = pod_object("offline", container("main", gpus=1, batch_core=10, batch_memory=1024))
    path.admit(cluster, path.schedule(cluster, offline))
    sleepers = [subprocess.Popen(["sleep", "60"]) for _ in range(2)]
    agent = cluster.agent
    access = KubernetesAccess(ReviewCalls(ApiClient(cluster.api.configuration())))
    assert agent.colocation and agent.idle and agent.evictor
    batch = BatchParts(agent.colocation, agent.idle, agent.evictor)
    server = MetricsServer(
        AgentCollector(agent.core, agent.monitor, batch), 0, host="127.0.0.1", access=access
    )
    server.start()
    try:
        cluster.place(tenant, "main", sleepers[0].pid)
        cluster.place(greedy, "main", sleepers[1].pid)
        cluster.nvml_shows(
            (sleepers[0].pid, path.assigned(tenant).gpus[0].uuid, 1000),
            (sleepers[1].pid, path.assigned(greedy).gpus[0].uuid, 9000),
        )
        sleepers[1].wait(timeout=10)  # over its cap: killed, and counted
        uid = tenant["metadata"]["uid"]
        path.wait_for(lambda: cluster.value("gpulet_container_memory_used_bytes", pod_uid=uid))
        path.wait_for(lambda: cluster.value("gpulet_container_backstop_violations_total"))
        path.wait_for(lambda: cluster.value("gpulet_container_batch_share_percent"))
        assert get(server.port, "/metrics")[0] == 401
        code, text = get(server.port, "/metrics", SCRAPER_TOKEN)
        assert code == 200
        agent_series: dict[str, set[str]] = {}
        scraped(text, agent_series)
        code, text = get(cluster.scorer.server.port, "/metrics")
        assert code == 200
        extender_series: dict[str, set[str]] = {}
        scraped(text, extender_series)
        assert agent_series and extender_series
        for labels in agent_series.values():
            labels |= target_labels("ServiceMonitor")
        for labels in extender_series.values():
            labels |= target_labels("PodMonitor")
        yield agent_series | extender_series
    finally:
        server.stop()
        for p in sleepers:
            p.kill()
            p.wait()


def test_the_dashboard_uses_only_series_and_labels_that_are_exported(
    exported: dict[str, set[str]],
) -> None:
    doc = dashboard()
    # The series the scrape saw include those of every kind of finding the dashboard shows.
    for name in (
        "gpulet_container_backstop_violations_total",
        "gpulet_agent_http_denied_total",
        "gpulet_scorer_request_seconds_bucket",
    ):
        assert name in exported, name
    used: set[str] = set()
    for title, target in queries(doc):
        expr = target["expr"]
        names = set(METRIC.findall(expr))
        used |= names
        for name in names:
            assert name in exported, f"{title}: {name} is not exported"
        for name, matchers in SELECTOR.findall(expr):
            for label in MATCHER.findall(matchers):
                assert label in exported[name], f"{title}: {name} has no label {label}"
        grouped = {g.strip() for group in GROUPING.findall(expr) for g in group.split(",")}
        for label in grouped - {""}:
            for name in names:
                assert label in exported[name], f"{title}: {name} has no label {label}"
        for label in LEGEND.findall(target.get("legendFormat", "")):
            for name in names:
                assert label in exported[name], f"{title}: legend {label} not on {name}"
    for variable in variables(doc).values():
        if variable["type"] == "query":
            query = variable["query"]["query"]
            for name, label in LABEL_VALUES.findall(query):
                assert label in exported[name], f"${variable['name']}: {name} has no {label}"
            for name, matchers in SELECTOR.findall(query):
                for label in MATCHER.findall(matchers):
                    assert label in exported[name], f"${variable['name']}: {name} has no {label}"
    # What the operator asked to see: memory, compute, the backstops, health, the extender.
    for name in (
        "gpulet_gpu_allocated_memory_bytes",
        "gpulet_gpu_memory_used_bytes",
        "gpulet_gpu_allocated_core_percent",
        "gpulet_gpu_utilization_percent",
        "gpulet_gpu_healthy",
        "gpulet_container_memory_cap_bytes",
        "gpulet_container_memory_used_bytes",
        "gpulet_container_core_percent",
        "gpulet_container_utilization_percent",
        "gpulet_container_throttled_seconds_total",
        "gpulet_container_frozen_ratio",
        "gpulet_container_over_share",
        "gpulet_container_backstop_violations_total",
        "gpulet_scorer_request_seconds_bucket",
        "gpulet_scorer_requests_total",
        "gpulet_scorer_nodes",
        "gpulet_scorer_nodes_quiet",
        "gpulet_gpu_batch_room_core_percent",
        "gpulet_container_batch_share_percent",
        "gpulet_batch_evictions_total",
    ):
        assert name in used, name


def test_the_label_check_catches_what_is_not_exported() -> None:
    """The checks above find a misspelt series or label (the parsing is not vacuous)."""
    expr = 'sum by (gpu) (rate(gpulet_container_throttled_seconds{uuid=~"$gpu"}[5m]))'
    assert METRIC.findall(expr) == ["gpulet_container_throttled_seconds"]
    assert SELECTOR.findall(expr) == [("gpulet_container_throttled_seconds", 'uuid=~"$gpu"')]
    assert MATCHER.findall('node=~"$node", code!~"2..", state="bound"') == [
        "node",
        "code",
        "state",
    ]
    assert GROUPING.findall(expr) == ["gpu"]
    assert LABEL_VALUES.findall('label_values(gpulet_gpu_healthy{node=~"$node"}, uuid)') == [
        ("gpulet_gpu_healthy", "uuid")
    ]


# --- the chart ---------------------------------------------------------------------------------


def monitoring_objects(docs: list[Doc]) -> dict[str, Doc]:
    names = ("gpulet-metrics", "gpulet-grafana-dashboard")
    return {
        key(d): d
        for d in docs
        if d["kind"] in ("ServiceMonitor", "PodMonitor") or d["metadata"]["name"].startswith(names)
    }


@needs_helm
def test_the_chart_monitors_nothing_unless_asked() -> None:
    assert monitoring_objects(render()) == {}
    assert monitoring_objects(render("extender.layout=service")) == {}


@needs_helm
@pytest.mark.parametrize("layout", ["sidecar", "service"])
def test_the_chart_monitors_the_agents_and_the_extender(layout: str) -> None:
    docs = render(*ENABLED, f"extender.layout={layout}", "monitoring.serviceMonitor.labels.r=kps")
    found = monitoring_objects(docs)
    assert sorted(found) == [
        "ClusterRole/gpulet-metrics-reader",
        "ClusterRoleBinding/gpulet-metrics-reader",
        "ConfigMap/gpulet-grafana-dashboard",
        "PodMonitor/gpulet-extender",
        "Secret/gpulet-metrics-scraper-token",
        "ServiceAccount/gpulet-metrics-scraper",
        "ServiceMonitor/gpulet-agent",
    ]
    for doc in found.values():
        if doc["apiVersion"] != "monitoring.coreos.com/v1":
            for version in K8S_VERSIONS:
                kubernetes_validate.validate(doc, version, strict=True)

    # The agents: the ServiceMonitor selects the Service over their pods, by its port's name,
    # with the scraper's token, which may get /metrics and nothing else.
    monitor = found["ServiceMonitor/gpulet-agent"]
    assert monitor["metadata"]["labels"]["r"] == "kps"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["kube-system"]}
    service = one(docs, "Service", "gpulet-agent-metrics")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert (endpoint["path"], endpoint["scheme"], endpoint["honorLabels"]) == (
        "/metrics",
        "http",
        True,
    )
    credentials = endpoint["authorization"]["credentials"]
    assert endpoint["authorization"]["type"] == "Bearer"
    secret = found[f"Secret/{credentials['name']}"]
    assert secret["type"] == "kubernetes.io/service-account-token" and credentials["key"] == "token"
    account = secret["metadata"]["annotations"]["kubernetes.io/service-account.name"]
    assert found[f"ServiceAccount/{account}"]["metadata"]["namespace"] == "kube-system"
    binding = found["ClusterRoleBinding/gpulet-metrics-reader"]
    assert binding["roleRef"]["name"] == "gpulet-metrics-reader"
    assert {"kind": "ServiceAccount", "name": account, "namespace": "kube-system"} in binding[
        "subjects"
    ]
    # The user the agents' SubjectAccessReview asks about (the scrape test's SCRAPER).
    assert f"system:serviceaccount:kube-system:{account}" == SCRAPER
    assert found["ClusterRole/gpulet-metrics-reader"]["rules"] == [
        {"nonResourceURLs": ["/metrics"], "verbs": ["get"]}
    ]
    (relabel,) = endpoint["relabelings"]
    assert relabel["sourceLabels"] == ["__meta_kubernetes_pod_node_name"]
    assert relabel["targetLabel"] == "node"

    # The extender: the PodMonitor selects its pods (the scheduler's, or its own) and the port
    # its settings' health listener serves /metrics on, in plain HTTP.
    pods = found["PodMonitor/gpulet-extender"]
    owner = "gpulet-scheduler" if layout == "sidecar" else "gpulet-scorer"
    template = one(docs, "Deployment", owner)["spec"]["template"]
    assert pods["spec"]["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
    (endpoint,) = pods["spec"]["podMetricsEndpoints"]
    ports = {
        p["name"]: p["containerPort"]
        for c in template["spec"]["containers"]
        for p in c.get("ports", [])
    }
    settings = yaml.safe_load(one(docs, "ConfigMap", "gpulet-scorer")["data"]["scorer.yaml"])
    assert ports[endpoint["port"]] == settings["healthPort"]
    assert (endpoint["path"], endpoint["scheme"]) == ("/metrics", "http")
    assert "authorization" not in endpoint

    # The dashboard, as Grafana's sidecar loads it.
    config = found["ConfigMap/gpulet-grafana-dashboard"]
    assert config["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config["metadata"]["namespace"] == "kube-system"
    (text,) = config["data"].values()
    assert text == DASHBOARD.read_text()
    assert json.loads(text) == dashboard()


@needs_helm
def test_the_chart_binds_other_readers_and_places_the_dashboard() -> None:
    docs = render(
        "monitoring.metricsReaders[0].kind=ServiceAccount",
        "monitoring.metricsReaders[0].name=prometheus",
        "monitoring.metricsReaders[0].namespace=monitoring",
        "monitoring.grafanaDashboard.enabled=true",
        "monitoring.grafanaDashboard.namespace=grafana",
        "monitoring.grafanaDashboard.annotations.grafana_folder=GPUs",
        namespace="gpu-system",
    )
    found = monitoring_objects(docs)
    # Readers without the ServiceMonitor: the ClusterRole and its binding only.
    assert sorted(found) == [
        "ClusterRole/gpulet-metrics-reader",
        "ClusterRoleBinding/gpulet-metrics-reader",
        "ConfigMap/gpulet-grafana-dashboard",
    ]
    assert found["ClusterRoleBinding/gpulet-metrics-reader"]["subjects"] == [
        {"kind": "ServiceAccount", "name": "prometheus", "namespace": "monitoring"}
    ]
    config = found["ConfigMap/gpulet-grafana-dashboard"]["metadata"]
    assert config["namespace"] == "grafana"
    assert config["annotations"] == {"grafana_folder": "GPUs"}


@needs_helm
def test_the_chart_refuses_monitoring_values_it_does_not_know() -> None:
    with pytest.raises(Exception, match="interval"):
        render("monitoring.serviceMonitor.interval=soon")
    with pytest.raises(Exception, match="namespace"):
        render(
            "monitoring.metricsReaders[0].kind=ServiceAccount",
            "monitoring.metricsReaders[0].name=p",
        )
    with pytest.raises(Exception, match="enabled"):
        render("monitoring.grafanaDashboard.enabled=yes")
