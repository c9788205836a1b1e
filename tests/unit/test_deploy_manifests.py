"""Every manifest in deploy/ against the Kubernetes API schemas, and what a cluster admin would
notice: the node agent's host paths, flags, probes, privileges and RBAC; the Helm chart's
values, and (where `helm` is installed) the chart rendered, equal to the static manifests."""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from pathlib import Path, PurePosixPath
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from scorer.config import load_config

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
CHART = DEPLOY / "helm" / "gpulet"
#: The oldest release the manifests are for (that of the pinned kube-scheduler image) and the
#: newest whose schemas kubernetes-validate ships.
K8S_VERSIONS = ("1.31", str(kubernetes_validate.latest_version()))

Doc = dict[str, Any]


def documents(path: Path) -> list[Doc]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def kustomization() -> Doc:
    (doc,) = documents(DEPLOY / "kustomization.yaml")
    return doc


def config_files() -> dict[str, str]:
    """The files that are not Kubernetes objects but ConfigMaps' contents: file -> ConfigMap."""
    return {f: g["name"] for g in kustomization()["configMapGenerator"] for f in g["files"]}


def manifest_files() -> list[Path]:
    """Every YAML file under deploy/ but the kustomization, the ConfigMaps' contents and the
    Helm chart (templates, not YAML)."""
    skip = {"kustomization.yaml", *config_files()}
    return sorted(
        p
        for p in DEPLOY.rglob("*.yaml")
        if (rel := p.relative_to(DEPLOY)).parts[0] != "helm" and str(rel) not in skip
    )


def static_objects() -> list[Doc]:
    return [d for f in manifest_files() for d in documents(f)]


def one(docs: list[Doc], kind: str, name: str) -> Doc:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, (kind, name, len(found))
    return found[0]


def key(doc: Doc) -> str:
    return f"{doc['kind']}/{doc['metadata']['name']}"


# --- every object against the API schemas --------------------------------------------------


STATIC = [(f"{f.relative_to(DEPLOY)}:{key(d)}", d) for f in manifest_files() for d in documents(f)]


def test_the_agent_is_among_the_manifests() -> None:
    assert {"DaemonSet/gpulet-agent", "ClusterRole/gpulet-agent"} <= {key(d) for _, d in STATIC}


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("doc", [d for _, d in STATIC], ids=[i for i, _ in STATIC])
def test_manifest_is_valid_kubernetes(doc: Doc, version: str) -> None:
    kubernetes_validate.validate(doc, version, strict=True)


#: KubeSchedulerConfiguration (kubescheduler.config.k8s.io/v1) is in no API schema; these are
#: the fields of its Go types (k8s.io/kube-scheduler/config/v1), which kube-scheduler decodes
#: strictly: an unknown field stops it.
_DURATION = {"type": "string", "pattern": r"^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$"}
SCHEDULER_CONFIG_SCHEMA: Doc = {
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind"],
    "properties": {
        "apiVersion": {"const": "kubescheduler.config.k8s.io/v1"},
        "kind": {"const": "KubeSchedulerConfiguration"},
        "parallelism": {"type": "integer", "minimum": 1},
        "leaderElection": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "leaderElect": {"type": "boolean"},
                "leaseDuration": _DURATION,
                "renewDeadline": _DURATION,
                "retryPeriod": _DURATION,
                "resourceLock": {"type": "string"},
                "resourceName": {"type": "string", "minLength": 1},
                "resourceNamespace": {"type": "string", "minLength": 1},
            },
        },
        "clientConnection": {"type": "object"},
        "enableProfiling": {"type": "boolean"},
        "enableContentionProfiling": {"type": "boolean"},
        "percentageOfNodesToScore": {"type": "integer", "minimum": 0, "maximum": 100},
        "podInitialBackoffSeconds": {"type": "integer", "minimum": 1},
        "podMaxBackoffSeconds": {"type": "integer", "minimum": 1},
        "profiles": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "schedulerName": {"type": "string", "minLength": 1},
                    "percentageOfNodesToScore": {"type": "integer"},
                    "plugins": {"type": "object"},
                    "pluginConfig": {"type": "array"},
                },
            },
        },
        "extenders": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["urlPrefix"],
                "properties": {
                    "urlPrefix": {"type": "string", "pattern": "^https?://"},
                    "filterVerb": {"type": "string"},
                    "preemptVerb": {"type": "string"},
                    "prioritizeVerb": {"type": "string"},
                    "weight": {"type": "integer", "minimum": 1},
                    "bindVerb": {"type": "string"},
                    "enableHTTPS": {"type": "boolean"},
                    "tlsConfig": {"type": "object"},
                    "httpTimeout": _DURATION,
                    "nodeCacheCapable": {"type": "boolean"},
                    "managedResources": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["name"],
                            "properties": {
                                "name": {"type": "string", "minLength": 1},
                                "ignoredByScheduler": {"type": "boolean"},
                            },
                        },
                    },
                    "ignorable": {"type": "boolean"},
                },
            },
        },
        "delayCacheUntilActive": {"type": "boolean"},
    },
}


def test_scheduler_configuration_has_only_fields_kube_scheduler_knows() -> None:
    (config,) = documents(DEPLOY / "scheduler" / "kube-scheduler-config.yaml")
    jsonschema.validate(config, SCHEDULER_CONFIG_SCHEMA)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(
            {**config, "extenders": [{"urlPrefx": "http://x"}]}, SCHEDULER_CONFIG_SCHEMA
        )


# --- the node agent ---------------------------------------------------------------------------


def agent_pod(docs: list[Doc]) -> Doc:
    spec: Doc = one(docs, "DaemonSet", "gpulet-agent")["spec"]["template"]["spec"]
    return spec


def agent_container(docs: list[Doc]) -> Doc:
    containers: list[Doc] = agent_pod(docs)["containers"]
    (container,) = containers
    return container


def flags(args: list[str]) -> dict[str, str]:
    """`--name=value` and `--name value` arguments, by name."""
    found: dict[str, str] = {}
    for i, arg in enumerate(args):
        if arg.startswith("--"):
            name, eq, value = arg.partition("=")
            if not eq and i + 1 < len(args) and not args[i + 1].startswith("--"):
                value = args[i + 1]
            found[name] = value
    return found


def agent_flags(docs: list[Doc]) -> dict[str, str]:
    container = agent_container(docs)
    assert container["args"][:2] == ["agent", "run"]
    return flags(container["args"])


def on_host(docs: list[Doc], path: str) -> tuple[str, bool]:
    """Where a path of the agent's container lies on the host, and whether it is writable."""
    pod = agent_pod(docs)
    volumes = {v["name"]: v for v in pod["volumes"]}
    inside = PurePosixPath(path)
    mounts = [
        m for m in agent_container(docs)["volumeMounts"] if inside.is_relative_to(m["mountPath"])
    ]
    assert mounts, f"{path} is on no volume: the agent would see its own container's"
    mount = max(mounts, key=lambda m: len(m["mountPath"]))
    host = PurePosixPath(volumes[mount["name"]]["hostPath"]["path"])
    return str(host / inside.relative_to(mount["mountPath"])), not mount.get("readOnly", False)


#: What each path the agent is given is on the host, and whether it must write there.
AGENT_PATHS = {
    "--kubelet-dir": ("/var/lib/kubelet/device-plugins", True),  # its sockets
    "--pod-resources-dir": ("/var/lib/kubelet/pod-resources", False),  # connect(2) only
    "--kubelet-state-dir": ("/var/lib/kubelet", False),  # cpu_manager_state
    "--state-dir": ("/var/lib/gpulet", True),  # the checkpoint
    "--region-root": ("/run/gpulet/containers", True),  # regions, limits files
    "--library-dir": ("/var/lib/gpulet/lib", True),  # the limiter, ld.so.preload
    "--cgroup-root": ("/sys/fs/cgroup", True),  # cpusets (NUMA pinning)
    "--proc-root": ("/proc", False),  # processes' cgroups
}


@pytest.mark.parametrize(("flag", "expected"), AGENT_PATHS.items())
def test_each_path_the_agent_is_given_is_the_hosts_with_the_access_it_needs(
    flag: str, expected: tuple[str, bool]
) -> None:
    docs = static_objects()
    assert on_host(docs, agent_flags(docs)[flag]) == expected


def test_discovery_reads_the_hosts_sysfs_read_only() -> None:
    # The pod's own /sys shows only its network namespace's netdevs.
    assert on_host(static_objects(), "/sys") == ("/sys", False)


def test_paths_kubelet_mounts_into_containers_are_the_same_inside_and_out() -> None:
    # The agent answers Allocate with host paths it knows by its own view of them.
    docs = static_objects()
    args = agent_flags(docs)
    for path in (args["--region-root"], args["--library-dir"], "/run/gpulet", "/var/lib/gpulet"):
        assert on_host(docs, path) == (path, True)


def test_the_host_paths_are_exactly_these() -> None:
    # A new host path is a new privilege: it should be a deliberate change here too.
    host = {v["hostPath"]["path"] for v in agent_pod(static_objects())["volumes"]}
    assert host == {
        "/var/lib/kubelet",
        "/var/lib/kubelet/device-plugins",
        "/var/lib/gpulet",
        "/run/gpulet",
        "/sys",
        "/sys/fs/cgroup",
        "/proc",
    }


def test_agent_slots_are_the_extenders() -> None:
    args = agent_flags(static_objects())
    settings = load_config(DEPLOY / "scorer" / "scorer.yaml")
    assert (int(args["--gpu-slots"]), int(args["--rdma-slots"])) == (
        settings.gpu_slots,
        settings.rdma_slots,
    )


def test_node_name_comes_from_the_pods_node() -> None:
    docs = static_objects()
    assert agent_flags(docs)["--node-name"] == "$(NODE_NAME)"
    env = {e["name"]: e for e in agent_container(docs)["env"]}
    assert env["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}


def test_probes_ask_healthz_on_the_metrics_port() -> None:
    docs = static_objects()
    container = agent_container(docs)
    port = int(agent_flags(docs)["--metrics-port"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe in ("livenessProbe", "readinessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] == "/healthz"
        assert ports.get(get["port"], get["port"]) == port
    service = one(docs, "Service", "gpulet-agent-metrics")
    assert service["spec"]["clusterIP"] == "None"
    assert ports[service["spec"]["ports"][0]["targetPort"]] == port
    ds = one(docs, "DaemonSet", "gpulet-agent")
    assert service["spec"]["selector"] == ds["spec"]["selector"]["matchLabels"]


def test_the_agent_has_no_privilege_it_does_not_use() -> None:
    docs = static_objects()
    pod = agent_pod(docs)
    security = agent_container(docs)["securityContext"]
    assert pod["hostPID"] is True  # NVML's host PIDs
    assert not pod.get("hostNetwork") and not pod.get("hostIPC")
    assert not security.get("privileged")
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"]["drop"] == ["ALL"]
    # CAP_KILL only with enforcement on (signalling other users' processes).
    kill = agent_flags(docs)["--enforce"] != "report"
    assert security["capabilities"].get("add", []) == (["KILL"] if kill else [])
    # The GPUs through the NVIDIA runtime, not a hostPath /dev.
    env = {e["name"]: e.get("value") for e in agent_container(docs)["env"]}
    assert pod["runtimeClassName"] == "nvidia"
    assert (env["NVIDIA_VISIBLE_DEVICES"], env["NVIDIA_DRIVER_CAPABILITIES"]) == ("all", "utility")


def tolerated(tolerations: list[Doc], taint_key: str, effect: str) -> bool:
    return any(
        (t.get("key") in (None, taint_key) if t["operator"] == "Exists" else t["key"] == taint_key)
        and t.get("effect") in (None, effect)
        for t in tolerations
    )


def test_the_agent_runs_on_labelled_gpu_nodes_and_leaves_on_drain() -> None:
    docs = static_objects()
    pod = agent_pod(docs)
    assert pod["nodeSelector"] == {"gpulet.io/enabled": "true"}
    assert tolerated(pod["tolerations"], "nvidia.com/gpu", "NoSchedule")
    assert not tolerated(pod["tolerations"], "example.com/drain", "NoExecute")
    assert pod["priorityClassName"] == "system-node-critical"
    update = one(docs, "DaemonSet", "gpulet-agent")["spec"]["updateStrategy"]
    assert update == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}}


def test_agent_rbac_grants_the_verbs_it_uses() -> None:
    docs = static_objects()
    role = one(docs, "ClusterRole", "gpulet-agent")
    granted = {
        (group, res, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for res in rule["resources"]
        for verb in rule["verbs"]
    }
    events = {(g, "events", v) for g in ("", "events.k8s.io") for v in ("create", "patch")}
    pods = {("", "pods", v) for v in ("get", "list", "watch", "patch")}
    assert granted == {("", "nodes", "get"), ("", "nodes", "patch")} | pods | events
    binding = one(docs, "ClusterRoleBinding", "gpulet-agent")
    assert binding["roleRef"]["name"] == "gpulet-agent"
    account = one(docs, "ServiceAccount", "gpulet-agent")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "gpulet-agent", "namespace": "kube-system"}
    ]
    assert agent_pod(docs)["serviceAccountName"] == account["metadata"]["name"]


def test_agent_and_extender_run_the_same_image() -> None:
    docs = static_objects()
    (scorer,) = one(docs, "Deployment", "gpulet-scorer")["spec"]["template"]["spec"]["containers"]
    assert agent_container(docs)["image"] == scorer["image"]


# --- the Helm chart, without helm -------------------------------------------------------------


def values() -> Doc:
    (doc,) = documents(CHART / "values.yaml")
    return doc


def values_schema() -> Doc:
    schema: Doc = yaml.safe_load((CHART / "values.schema.json").read_text())
    return schema


def templates() -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted((CHART / "templates").iterdir())}


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
    assert agent_container(static_objects())["image"] == expected


def test_values_follow_their_schema() -> None:
    schema = values_schema()
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.validate(values(), schema)
    for bad in ({"enforce": "kil"}, {"metricsPort": 0}):
        wrong = values()
        wrong["agent"].update(bad)
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(wrong, schema)


def test_chart_defaults_are_the_static_manifests() -> None:
    docs = static_objects()
    v = values()
    args = agent_flags(docs)
    pod, container = agent_pod(docs), agent_container(docs)
    assert (v["gpuSlots"], v["rdmaSlots"]) == (int(args["--gpu-slots"]), int(args["--rdma-slots"]))
    agent = v["agent"]
    assert agent["enforce"] == args["--enforce"]
    assert agent["metricsPort"] == int(args["--metrics-port"])
    assert agent["nodeSelector"] == pod["nodeSelector"]
    assert agent["tolerations"] == pod["tolerations"]
    assert agent["runtimeClassName"] == pod["runtimeClassName"]
    assert agent["priorityClassName"] == pod["priorityClassName"]
    assert agent["resources"] == container["resources"]
    for name, part in (("gpulet-scorer", "scorer"), ("gpulet-scheduler", "scheduler")):
        spec = one(docs, "Deployment", name)["spec"]
        (c,) = spec["template"]["spec"]["containers"]
        assert v[part]["priorityClassName"] == spec["template"]["spec"]["priorityClassName"]
        assert v[part]["resources"] == c["resources"]
        assert v[part]["tolerations"] == spec["template"]["spec"].get("tolerations", [])
    scheduler = one(docs, "Deployment", "gpulet-scheduler")["spec"]
    assert v["scheduler"]["replicas"] == scheduler["replicas"]
    assert v["scheduler"]["image"] == scheduler["template"]["spec"]["containers"][0]["image"]
    (config,) = documents(DEPLOY / "scheduler" / "kube-scheduler-config.yaml")
    assert v["scheduler"]["weight"] == config["extenders"][0]["weight"]


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


# --- the Helm chart, rendered (where helm is installed) ---------------------------------------

HELM = shutil.which("helm")
try:
    import helm_python  # Helm's own Go engine as a library (the helm-python-sdk wheel)
except ImportError:  # pragma: no cover - a platform the wheel is not built for
    helm_python = None  # type: ignore[assignment]
needs_helm = pytest.mark.skipif(
    HELM is None and helm_python is None, reason="neither helm nor helm-python-sdk is installed"
)


def render(*sets: str, namespace: str = "kube-system") -> list[Doc]:
    """`helm template gpulet deploy/helm/gpulet --namespace kube-system --set ...` (or another
    namespace): with the helm command where there is one, else with Helm's engine from
    helm-python-sdk (what the test install brings), checking the values against the chart's
    schema as helm does."""
    if HELM is not None:
        command = [HELM, "template", "gpulet", str(CHART), "--namespace", namespace]
        for s in sets:
            command += ["--set", s]
        out = subprocess.run(command, capture_output=True, text=True, check=False, timeout=60)
        if out.returncode:
            raise RuntimeError(out.stderr)
        return [d for d in yaml.safe_load_all(out.stdout) if d]
    assert helm_python is not None
    chart = helm_python.Chart.load(CHART)
    values = helm_python.parse_set_string(",".join(sets)) if sets else {}
    chart.validate_schema(chart.merge_values(values))
    rendered = chart.render(values, name="gpulet", namespace=namespace, is_install=True)
    texts = [text for path, text in sorted(rendered.items()) if path.endswith(".yaml")]
    return [d for text in texts for d in yaml.safe_load_all(text) if d]


@needs_helm
def test_the_chart_refuses_values_its_schema_does_not_allow() -> None:
    with pytest.raises(Exception, match="gpuSlots"):
        render("gpuSlots=0")


def normalised(doc: Doc) -> Doc:
    """What must be equal between the chart and the static manifests: everything but the
    labels and annotations Helm adds and the image pull policy."""
    doc = copy.deepcopy(doc)
    doc["metadata"].pop("labels", None)
    doc["metadata"].pop("annotations", None)
    template = doc.get("spec", {}).get("template")
    if template:
        template["metadata"].pop("annotations", None)
        for container in template["spec"]["containers"]:
            container.pop("imagePullPolicy", None)
    if doc["kind"] == "ConfigMap":
        doc["data"] = {k: yaml.safe_load(v) for k, v in doc["data"].items()}
    return doc


def static_with_config_maps() -> list[Doc]:
    """The static objects plus the ConfigMaps kustomize generates."""
    namespace = kustomization()["namespace"]
    maps = [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": namespace},
            "data": {Path(f).name: (DEPLOY / f).read_text()},
        }
        for f, name in config_files().items()
    ]
    return static_objects() + maps


@needs_helm
def test_chart_renders_the_static_manifests() -> None:
    rendered = render()
    for doc in rendered:
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)
    static = {key(d): normalised(d) for d in static_with_config_maps()}
    assert {key(d): normalised(d) for d in rendered} == static
    config = one(rendered, "ConfigMap", "gpulet-scheduler-config")["data"]
    jsonschema.validate(
        yaml.safe_load(config["kube-scheduler-config.yaml"]), SCHEDULER_CONFIG_SCHEMA
    )


@needs_helm
def test_chart_values_change_agent_and_extender_together(tmp_path: Path) -> None:
    rendered = render("agent.enforce=kill", "scheduler.enabled=false", "gpuSlots=50")
    args = agent_flags(rendered)
    assert (args["--enforce"], args["--gpu-slots"]) == ("kill", "50")
    assert agent_container(rendered)["securityContext"]["capabilities"]["add"] == ["KILL"]
    settings = tmp_path / "scorer.yaml"
    settings.write_text(one(rendered, "ConfigMap", "gpulet-scorer")["data"]["scorer.yaml"])
    assert load_config(settings).gpu_slots == 50
    assert not [d for d in rendered if "scheduler" in d["metadata"]["name"]]


def test_every_flag_the_daemonset_passes_is_one_the_agent_takes() -> None:
    """The DaemonSet's args parse with `gpulet agent run` as it is (a renamed or missing flag
    would crash-loop every agent)."""
    from click.testing import CliRunner  # noqa: PLC0415 - only this test needs it

    from gpulet.cli import main  # noqa: PLC0415

    (daemonset,) = [
        d
        for d in yaml.safe_load_all((DEPLOY / "agent" / "daemonset.yaml").read_text())
        if d and d["kind"] == "DaemonSet"
    ]
    (agent,) = daemonset["spec"]["template"]["spec"]["containers"]
    args = [a.replace("$(NODE_NAME)", "node-1") for a in agent["args"]]
    result = CliRunner().invoke(main, [*args, "--help"])
    assert result.exit_code == 0, result.output
    flags = {a.split("=", 1)[0] for a in args if a.startswith("--")}
    assert all(flag in result.output for flag in flags)
