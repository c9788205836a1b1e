"""What `kubectl apply -k` gives for each layout (deploy/ and deploy/extender-service/),
against the Kubernetes API schemas, and what a cluster admin would notice: the node agent's
host paths, flags, probes, privileges and RBAC; the extender's reach; the images set once.
The Helm chart: test_helm_chart.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import PurePosixPath
from typing import Any

import click
import jsonschema
import kubernetes_validate  # type: ignore[import-untyped]
import pytest

from gpulet.api import nodetopology as nt
from gpulet.kube.crd import node_topology_crd
from scorer.config import default_namespace, load_config
from tests.deploy import (
    CHART,
    DEPLOY,
    LAYOUTS,
    agent_container,
    agent_flags,
    agent_pod,
    documents,
    key,
    kustomize,
    one,
)

#: The oldest release the manifests are for (that of the pinned kube-scheduler image) and the
#: newest whose schemas kubernetes-validate ships.
K8S_VERSIONS = ("1.31", str(kubernetes_validate.latest_version()))
#: Kinds of cert-manager (the service layout's certificates), in no Kubernetes schema.
CERT_MANAGER = "cert-manager.io/v1"

Doc = dict[str, Any]


def static_objects() -> list[Doc]:
    """The default layout's objects, as `kubectl apply -k deploy/` applies them."""
    return kustomize("sidecar")


# --- every object against the API schemas --------------------------------------------------


def test_the_agent_is_among_the_manifests() -> None:
    assert {"DaemonSet/gpulet-agent", "ClusterRole/gpulet-agent"} <= {
        key(d) for d in static_objects()
    }


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_object_is_valid_kubernetes(layout: str, version: str) -> None:
    for doc in kustomize(layout):
        if doc["apiVersion"] != CERT_MANAGER:
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
                    "tlsConfig": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "insecure": {"type": "boolean"},
                            "serverName": {"type": "string"},
                            "certFile": {"type": "string"},
                            "keyFile": {"type": "string"},
                            "caFile": {"type": "string"},
                            "certData": {"type": "string"},
                            "keyData": {"type": "string"},
                            "caData": {"type": "string"},
                        },
                    },
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


@pytest.mark.parametrize(
    "path",
    ["scheduler/kube-scheduler-config.yaml", "extender-service/kube-scheduler-extender.yaml"],
)
def test_scheduler_configuration_has_only_fields_kube_scheduler_knows(path: str) -> None:
    (config,) = documents(DEPLOY / path)
    jsonschema.validate(config, SCHEDULER_CONFIG_SCHEMA)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(
            {**config, "extenders": [{"urlPrefx": "http://x"}]}, SCHEDULER_CONFIG_SCHEMA
        )


# --- the node agent ---------------------------------------------------------------------------


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
    settings = load_config(DEPLOY / "extender" / "scorer.yaml")
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


def granted(role: Doc) -> set[tuple[str, str, str]]:
    """What a Role or ClusterRole grants, as (API group, resource, verb); none of gpulet's
    narrows a rule by resourceNames."""
    assert all("resourceNames" not in rule for rule in role["rules"]), key(role)
    return {
        (group, res, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for res in rule["resources"]
        for verb in rule["verbs"]
    }


def bound_to(docs: list[Doc], kind: str, name: str) -> list[Doc]:
    """The subjects of the binding `name` of `kind`, which binds the role of the same name."""
    binding = one(docs, kind, name)
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": kind.removesuffix("Binding"),
        "name": name,
    }
    subjects: list[Doc] = binding["subjects"]
    return subjects


def test_agent_rbac_grants_the_verbs_it_uses() -> None:
    docs = static_objects()
    events = {(g, "events", v) for g in ("", "events.k8s.io") for v in ("create", "patch")}
    pods = {("", "pods", v) for v in ("get", "list", "watch", "patch")}
    # Its NodeTopology: created, replaced, watched; never deleted (its Node's garbage) nor
    # patched. Its Node: read (its uid), watched by name (its status), patched to remove the
    # old annotations; its status patched (the aggregates).
    topologies = {(nt.GROUP, nt.PLURAL, v) for v in ("get", "list", "watch", "create", "update")}
    nodes = {("", "nodes", v) for v in ("get", "list", "watch", "patch")}
    nodes.add(("", "nodes/status", "patch"))
    # Batch pods whose memory production needs back: evicted, nothing else.
    pods.add(("", "pods/eviction", "create"))
    assert granted(one(docs, "ClusterRole", "gpulet-agent")) == nodes | topologies | pods | events
    # Its heartbeat: Leases of the install namespace only, and no delete.
    heartbeat = one(docs, "Role", "gpulet-agent-heartbeat")
    assert heartbeat["metadata"]["namespace"] == "kube-system"
    assert granted(heartbeat) == {("coordination.k8s.io", "leases", v) for v in VERBS_TO_RENEW}
    account = one(docs, "ServiceAccount", "gpulet-agent")
    agent = [{"kind": "ServiceAccount", "name": "gpulet-agent", "namespace": "kube-system"}]
    assert bound_to(docs, "ClusterRoleBinding", "gpulet-agent") == agent
    assert bound_to(docs, "RoleBinding", "gpulet-agent-heartbeat") == agent
    assert one(docs, "RoleBinding", "gpulet-agent-heartbeat")["metadata"]["namespace"] == (
        "kube-system"
    )
    assert agent_pod(docs)["serviceAccountName"] == account["metadata"]["name"]


#: What renewing a Lease takes: read it, create it the first time, replace it.
VERBS_TO_RENEW = ("get", "create", "update")


# --- the NodeTopology CRD -------------------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_layout_installs_the_crd_the_code_defines(layout: str) -> None:
    """`kubectl apply -k` of either layout applies the CRD exactly as gpulet.kube.crd builds
    it (cluster-scoped: no namespace, whatever the kustomization's)."""
    crds = [d for d in kustomize(layout) if d["kind"] == "CustomResourceDefinition"]
    assert crds == [node_topology_crd()]


def test_the_shipped_crd_files_are_generated_from_the_code() -> None:
    """deploy/crd/nodetopology.yaml is what `python -m gpulet.kube.crd` writes, and the
    chart's files/nodetopology.yaml the same bytes: regenerate both after changing the
    schema (`python -m gpulet.kube.crd > deploy/crd/nodetopology.yaml`, then copy it)."""
    generated = subprocess.run(
        [sys.executable, "-m", "gpulet.kube.crd"], capture_output=True, text=True, check=True
    ).stdout
    shipped = (DEPLOY / "crd" / "nodetopology.yaml").read_text()
    assert shipped == generated
    assert (CHART / "files" / "nodetopology.yaml").read_text() == shipped
    assert documents(DEPLOY / "crd" / "nodetopology.yaml") == [node_topology_crd()]


def test_the_crd_serves_what_the_agent_writes_and_the_extender_reads() -> None:
    (crd,) = documents(DEPLOY / "crd" / "nodetopology.yaml")
    assert crd["metadata"]["name"] == nt.CRD_NAME
    spec = crd["spec"]
    assert (spec["group"], spec["scope"], spec["names"]["kind"], spec["names"]["plural"]) == (
        nt.GROUP,
        "Cluster",
        nt.KIND,
        nt.PLURAL,
    )
    (version,) = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == (nt.VERSION, True, True)
    # No status subresource: the agent writes the whole object, with `update`.
    assert "subresources" not in version


# --- where each pod is, for the heartbeat Leases ---------------------------------------------


def field_env(container: Doc) -> dict[str, str]:
    """A container's environment variables from the downward API: name -> field path."""
    return {
        e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"]
        for e in container.get("env", [])
        if "fieldRef" in e.get("valueFrom", {})
    }


def agent_option_envvars() -> dict[str, str]:
    """`gpulet agent run`'s options read from the environment: envvar -> option."""
    from gpulet.cli.agent import agent  # noqa: PLC0415 - only these tests need it

    assert isinstance(agent, click.Group)
    run = agent.commands["run"]
    return {p.envvar: p.opts[0] for p in run.params if isinstance(p.envvar, str)}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_agent_knows_its_namespace_and_pod(layout: str) -> None:
    """Its Lease is in its own namespace (`--namespace`, from POD_NAMESPACE) and names its pod
    as the holder (`--pod-name`, from POD_NAME)."""
    env = field_env(agent_container(kustomize(layout)))
    assert env == {
        "NODE_NAME": "spec.nodeName",
        "POD_NAMESPACE": "metadata.namespace",
        "POD_NAME": "metadata.name",
    }
    options = agent_option_envvars()
    assert (options["POD_NAMESPACE"], options["POD_NAME"]) == ("--namespace", "--pod-name")


@pytest.mark.parametrize(
    ("layout", "workload"), [("sidecar", "gpulet-scheduler"), ("service", "gpulet-scorer")]
)
def test_the_extender_knows_its_namespace(
    layout: str, workload: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The extender watches the Leases of its own namespace: POD_NAMESPACE, which its settings'
    default reads."""
    spec = one(kustomize(layout), "Deployment", workload)["spec"]["template"]["spec"]
    (extender,) = [c for c in spec["containers"] if c.get("args", [])[:2] == ["scorer", "serve"]]
    assert field_env(extender) == {"POD_NAMESPACE": "metadata.namespace"}
    monkeypatch.setenv("POD_NAMESPACE", "gpu-system")
    assert default_namespace() == "gpu-system"


def images(docs: list[Doc]) -> dict[str, str]:
    """Each container's image, by workload/container."""
    return {
        f"{d['metadata']['name']}/{c['name']}": c["image"]
        for d in docs
        if d["kind"] in ("Deployment", "DaemonSet")
        for c in d["spec"]["template"]["spec"]["containers"]
    }


def test_images_are_set_once_for_both_layouts() -> None:
    """The manifests name images without a tag; deploy/images/ sets each tag, once."""
    for path in DEPLOY.rglob("*.yaml"):
        if path.relative_to(DEPLOY).parts[0] in ("helm", "images"):
            continue
        for line in path.read_text().splitlines():
            if line.strip().startswith("image:"):
                reference = line.split("image:", 1)[1].strip()
                assert ":" not in reference and "@" not in reference, (path, line)
    (component,) = documents(DEPLOY / "images" / "kustomization.yaml")
    tags = {i["name"]: i["newTag"] for i in component["images"]}
    for layout in LAYOUTS:
        found = images(kustomize(layout))
        assert found, layout
        for where, image in found.items():
            name, _, tag = image.rpartition(":")
            assert tags.get(name) == tag, (layout, where, image)
    # The agent and the extender are one image, in either layout.
    sidecar, service = images(kustomize("sidecar")), images(kustomize("service"))
    assert (
        sidecar["gpulet-agent/agent"]
        == sidecar["gpulet-scheduler/extender"]
        == service["gpulet-scorer/scorer"]
    )


def test_every_flag_the_daemonset_passes_is_one_the_agent_takes() -> None:
    """The DaemonSet's args parse with `gpulet agent run` as it is (a renamed or missing flag
    would crash-loop every agent)."""
    from click.testing import CliRunner  # noqa: PLC0415 - only this test needs it

    from gpulet.cli import main  # noqa: PLC0415

    agent = agent_container(static_objects())
    args = [a.replace("$(NODE_NAME)", "node-1") for a in agent["args"]]
    result = CliRunner().invoke(main, [*args, "--help"])
    assert result.exit_code == 0, result.output
    flags = {a.split("=", 1)[0] for a in args if a.startswith("--")}
    assert all(flag in result.output for flag in flags)
