"""The admission policies (deploy/admission/policy.yaml, and the Helm chart's rendering of
them): their CEL evaluated, with celpy and the Kubernetes semantics of tests/cel_k8s.py, against
admission requests built as the API server builds them. Only the extender writes
`gpulet.io/assignment`, only the agent of a pod's node writes `gpulet.io/allocated`, and a pod
that asks for gpulet resources is not created with `spec.nodeName` set (but a mirror pod).
Only the agent of a node writes that node's NodeTopology and heartbeat Lease, as the contract
(gpulet.api.nodetopology) has them, and no other service account writes either."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from celpy import celtypes
from celpy.evaluation import CELEvalError
from kubernetes_validate.utils import schema_contents  # type: ignore[import-untyped]

from gpulet.api import nodetopology as nt
from gpulet.api.resources import (
    ALLOCATED_ANNOTATION,
    ASSIGNMENT_ANNOTATION,
    CORE_RESOURCE,
    GPU_RESOURCE,
    MANAGED_RESOURCES,
    MEMORY_RESOURCE,
    RDMA_RESOURCE,
    TOPOLOGY_ANNOTATION,
)
from gpulet.kube.crd import node_topology_crd
from gpulet.standins.objects import lease_object, node_topology_object, node_uid
from tests.cel_k8s import NODE_NAME_EXTRA, Policy, User, compile_expression, evaluate
from tests.deploy import kustomize, needs_helm, render
from tests.nodes import shipped

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
POLICY_FILE = DEPLOY / "admission" / "policy.yaml"

Doc = dict[str, Any]


def static_documents() -> list[Doc]:
    return [d for d in yaml.safe_load_all(POLICY_FILE.read_text()) if d]


def of_kind(docs: list[Doc], kind: str, name: str = "gpulet-pods") -> Doc:
    (doc,) = [d for d in docs if d.get("kind") == kind and d["metadata"]["name"] == name]
    return doc


@functools.cache
def rendered_documents(namespace: str = "kube-system") -> list[Doc]:
    return [
        d for d in render(namespace=namespace) if d["kind"].startswith("ValidatingAdmissionPolicy")
    ]


#: Where the policy comes from: deploy/ (kustomize) and the chart rendered (where Helm runs).
SOURCES: dict[str, Callable[[], list[Doc]]] = {
    "deploy": static_documents,
    "chart": rendered_documents,
}


#: gpulet's policies (deploy/admission/policy.yaml).
POLICIES = (
    "gpulet-pods",
    "gpulet-agent",
    "gpulet-node-status",
    "gpulet-extender",
    "gpulet-node-reports",
)


@functools.cache
def compiled(source: str, name: str = "gpulet-pods") -> Policy:
    return Policy(of_kind(SOURCES[source](), "ValidatingAdmissionPolicy", name))


@pytest.fixture(params=["deploy", pytest.param("chart", marks=needs_helm)])
def policy(request: pytest.FixtureRequest) -> Policy:
    return compiled(request.param)


@pytest.fixture(params=["deploy", pytest.param("chart", marks=needs_helm)])
def source(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# --- who asks ---------------------------------------------------------------------------------

SA_GROUPS = ("system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated")


def pod_token(account: str, node: str | None, namespace: str = "kube-system") -> User:
    """A service account's pod-bound token; since 1.30 it names its pod's node."""
    extra = {
        "authentication.kubernetes.io/pod-name": [f"{account}-x1"],
        "authentication.kubernetes.io/pod-uid": ["3f1c0d4e-0000-4000-8000-000000000001"],
        "authentication.kubernetes.io/credential-id": ["JTI=5b0c4c0e-9c41-4d07-bb0e"],
    }
    if node is not None:
        extra[NODE_NAME_EXTRA] = [node]
        extra["authentication.kubernetes.io/node-uid"] = [f"uid-of-{node}"]
    groups = (
        "system:serviceaccounts",
        f"system:serviceaccounts:{namespace}",
        "system:authenticated",
    )
    return User(f"system:serviceaccount:{namespace}:{account}", groups, extra)


#: The extender runs in the gpulet-scheduler pods, with their account (the default layout).
EXTENDER = pod_token("gpulet-scheduler", "control-1")
AGENT_A = pod_token("gpulet-agent", "node-a")
AGENT_B = pod_token("gpulet-agent", "node-b")
#: An agent whose token names no node: a legacy Secret-based token, or a cluster before 1.30.
AGENT_UNBOUND = User("system:serviceaccount:kube-system:gpulet-agent", SA_GROUPS)
TENANT = User("alice@example.com", ("team-a", "system:authenticated"))
#: A tenant's own pod, with its token (bound to node-a, where that pod runs).
TENANT_POD = pod_token("default", "node-a", namespace="team-a")
#: A service account named like the extender's, in a tenant's namespace.
LOOKALIKE = pod_token("gpulet-scheduler", "node-a", namespace="team-a")
REPLICASET_CONTROLLER = User("system:serviceaccount:kube-system:replicaset-controller", SA_GROUPS)
KUBELET_A = User("system:node:node-a", ("system:nodes", "system:authenticated"))
#: A name that looks like a node's, without the nodes' group.
NOT_A_NODE = User("system:node:node-a", ("system:authenticated",))


# --- what is asked ----------------------------------------------------------------------------

ASSIGNMENT = json.dumps(
    {
        "version": 1,
        "node": "node-a",
        "containers": {
            "main": {
                "gpus": [{"uuid": "GPU-1", "core": 30, "memory_mib": 8192, "exclusive": False}],
                "nics": [],
                "numa": [0],
            }
        },
    }
)
OTHER_ASSIGNMENT = ASSIGNMENT.replace("GPU-1", "GPU-7")
ALLOCATED = json.dumps({"version": 1, "containers": {"main": {GPU_RESOURCE: ["GPU-1::00"]}}})
OTHER_ALLOCATED = ALLOCATED.replace("GPU-1", "GPU-7")
SLICE = {"limits": {GPU_RESOURCE: "1", "gpulet.io/gpu-core": "30", "gpulet.io/gpu-memory": "8192"}}


def pod(
    annotations: dict[str, str] | None = None,
    node: str | None = None,
    resources: Doc | None = None,
    init_resources: Doc | None = None,
    labels: dict[str, str] | None = None,
) -> Doc:
    """A pod as the API server has it by validating admission (defaults applied)."""
    meta: Doc = {"name": "trainer", "namespace": "team-a", "uid": "9d1c-0001"}
    if annotations is not None:
        meta["annotations"] = annotations
    if labels is not None:
        meta["labels"] = labels
    spec: Doc = {
        "containers": [
            {"name": "main", "image": "cuda:12", "resources": resources or {}},
            {"name": "sidecar", "image": "busybox", "resources": {}},
        ],
        "schedulerName": "gpulet-scheduler",
        "restartPolicy": "Always",
    }
    if init_resources is not None:
        spec["initContainers"] = [{"name": "init", "image": "busybox", "resources": init_resources}]
    if node is not None:
        spec["nodeName"] = node
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}


def bound(annotations: dict[str, str] | None = None, **kw: Any) -> Doc:
    return pod(annotations, node="node-a", resources=SLICE, **kw)


# --- the cases --------------------------------------------------------------------------------

#: (case, operation, who, new object, old object, None if admitted else what the message says)
Case = tuple[str, str, User, Doc, Doc | None, str | None]

ASSIGNMENT_CASES: list[Case] = [
    (
        "extender sets the assignment at bind time",
        "UPDATE",
        EXTENDER,
        pod({ASSIGNMENT_ANNOTATION: ASSIGNMENT}, resources=SLICE),
        pod(resources=SLICE),
        None,
    ),
    (
        "extender changes an assignment",
        "UPDATE",
        EXTENDER,
        pod({ASSIGNMENT_ANNOTATION: OTHER_ASSIGNMENT}, resources=SLICE),
        pod({ASSIGNMENT_ANNOTATION: ASSIGNMENT}, resources=SLICE),
        None,
    ),
    (
        "user creates a pod with an assignment",
        "CREATE",
        TENANT,
        pod({ASSIGNMENT_ANNOTATION: ASSIGNMENT}, resources=SLICE),
        None,
        "alice@example.com may not set the gpulet.io/assignment annotation: only the gpulet "
        "extender (system:serviceaccount:kube-system:gpulet-scheduler) writes it",
    ),
    (
        "user sets an assignment on an update",
        "UPDATE",
        TENANT,
        pod({ASSIGNMENT_ANNOTATION: ASSIGNMENT}, resources=SLICE),
        pod(resources=SLICE),
        "alice@example.com may not set the gpulet.io/assignment annotation",
    ),
    (
        "user changes an assignment",
        "UPDATE",
        TENANT,
        bound({ASSIGNMENT_ANNOTATION: OTHER_ASSIGNMENT}),
        bound({ASSIGNMENT_ANNOTATION: ASSIGNMENT}),
        "alice@example.com may not change the gpulet.io/assignment annotation",
    ),
    (
        "user removes an assignment",
        "UPDATE",
        TENANT,
        bound({"team": "a"}),
        bound({ASSIGNMENT_ANNOTATION: ASSIGNMENT, "team": "a"}),
        "alice@example.com may not remove the gpulet.io/assignment annotation",
    ),
    (
        "user removes every annotation",
        "UPDATE",
        TENANT,
        bound(),
        bound({ASSIGNMENT_ANNOTATION: ASSIGNMENT}),
        "alice@example.com may not remove the gpulet.io/assignment annotation",
    ),
    (
        "user empties an assignment",
        "UPDATE",
        TENANT,
        bound({ASSIGNMENT_ANNOTATION: ""}),
        bound({ASSIGNMENT_ANNOTATION: ASSIGNMENT}),
        "alice@example.com may not change the gpulet.io/assignment annotation",
    ),
    (
        "user updates a bound pod, annotations kept",
        "UPDATE",
        TENANT,
        bound(
            {ASSIGNMENT_ANNOTATION: ASSIGNMENT, ALLOCATED_ANNOTATION: ALLOCATED, "team": "b"},
            labels={"tier": "gold"},
        ),
        bound({ASSIGNMENT_ANNOTATION: ASSIGNMENT, ALLOCATED_ANNOTATION: ALLOCATED, "team": "a"}),
        None,
    ),
    (
        "user updates a pod that has no annotations",
        "UPDATE",
        TENANT,
        pod(labels={"tier": "gold"}),
        pod(),
        None,
    ),
    (
        "service account named like the extender's, in a tenant's namespace",
        "UPDATE",
        LOOKALIKE,
        pod({ASSIGNMENT_ANNOTATION: ASSIGNMENT}, resources=SLICE),
        pod(resources=SLICE),
        "system:serviceaccount:team-a:gpulet-scheduler may not set the gpulet.io/assignment",
    ),
    (
        "agent sets an assignment",
        "UPDATE",
        AGENT_A,
        bound({ASSIGNMENT_ANNOTATION: ASSIGNMENT}),
        bound(),
        "system:serviceaccount:kube-system:gpulet-agent may not set the gpulet.io/assignment",
    ),
    (
        "controller creates a pod from a template that carries an assignment",
        "CREATE",
        REPLICASET_CONTROLLER,
        pod({ASSIGNMENT_ANNOTATION: ASSIGNMENT}, resources=SLICE),
        None,
        "system:serviceaccount:kube-system:replicaset-controller may not set the "
        "gpulet.io/assignment annotation",
    ),
]

ALLOCATED_CASES: list[Case] = [
    (
        "agent of the pod's node sets allocated",
        "UPDATE",
        AGENT_A,
        bound({ASSIGNMENT_ANNOTATION: ASSIGNMENT, ALLOCATED_ANNOTATION: ALLOCATED}),
        bound({ASSIGNMENT_ANNOTATION: ASSIGNMENT}),
        None,
    ),
    (
        "agent of the pod's node rewrites allocated",
        "UPDATE",
        AGENT_A,
        bound({ALLOCATED_ANNOTATION: OTHER_ALLOCATED}),
        bound({ALLOCATED_ANNOTATION: ALLOCATED}),
        None,
    ),
    (
        "user creates a pod with allocated",
        "CREATE",
        TENANT,
        pod({ALLOCATED_ANNOTATION: ALLOCATED}, resources=SLICE),
        None,
        "alice@example.com may not set the gpulet.io/allocated annotation: only the gpulet "
        "agent (system:serviceaccount:kube-system:gpulet-agent) of the pod's node writes it",
    ),
    (
        "user changes allocated",
        "UPDATE",
        TENANT,
        bound({ALLOCATED_ANNOTATION: OTHER_ALLOCATED}),
        bound({ALLOCATED_ANNOTATION: ALLOCATED}),
        "alice@example.com may not change the gpulet.io/allocated annotation",
    ),
    (
        "user removes allocated",
        "UPDATE",
        TENANT,
        bound({ASSIGNMENT_ANNOTATION: ASSIGNMENT}),
        bound({ASSIGNMENT_ANNOTATION: ASSIGNMENT, ALLOCATED_ANNOTATION: ALLOCATED}),
        "alice@example.com may not remove the gpulet.io/allocated annotation",
    ),
    (
        "tenant's pod, with a token of the pod's node, sets allocated",
        "UPDATE",
        TENANT_POD,
        bound({ALLOCATED_ANNOTATION: ALLOCATED}),
        bound(),
        "system:serviceaccount:team-a:default may not set the gpulet.io/allocated annotation",
    ),
    (
        "extender sets allocated",
        "UPDATE",
        EXTENDER,
        bound({ALLOCATED_ANNOTATION: ALLOCATED}),
        bound(),
        "system:serviceaccount:kube-system:gpulet-scheduler may not set the gpulet.io/allocated",
    ),
]

NODE_NAME_CASES: list[Case] = [
    (
        "user creates a gpulet pod with nodeName set",
        "CREATE",
        TENANT,
        pod(node="node-a", resources=SLICE),
        None,
        "a pod that asks for gpulet.io/gpu, gpulet.io/gpu-core, gpulet.io/gpu-memory may not "
        "be created with spec.nodeName set (node-a): the scheduler and the gpulet extender "
        "place it",
    ),
    (
        "user creates a batch slice pod with nodeName set",
        "CREATE",
        TENANT,
        pod(
            node="node-a",
            resources={
                "limits": {
                    "gpulet.io/batch-gpu-core": "30",
                    "gpulet.io/batch-gpu-memory": "8192",
                }
            },
        ),
        None,
        "a pod that asks for gpulet.io/batch-gpu-core, gpulet.io/batch-gpu-memory may not be "
        "created with spec.nodeName set",
    ),
    (
        "gpulet.io/gpu in requests only",
        "CREATE",
        TENANT,
        pod(node="node-a", resources={"requests": {GPU_RESOURCE: "1"}}),
        None,
        "a pod that asks for gpulet.io/gpu may not be created with spec.nodeName set",
    ),
    (
        "gpulet.io/rdma only",
        "CREATE",
        TENANT,
        pod(node="node-a", resources={"limits": {RDMA_RESOURCE: "2", "cpu": "4"}}),
        None,
        "a pod that asks for gpulet.io/rdma may not be created",
    ),
    (
        "gpulet resource in an init container only",
        "CREATE",
        TENANT,
        pod(node="node-a", init_resources={"limits": {GPU_RESOURCE: "1"}}),
        None,
        "a pod that asks for gpulet.io/gpu may not be created",
    ),
    (
        "controller creates a gpulet pod with nodeName set",
        "CREATE",
        REPLICASET_CONTROLLER,
        pod(node="node-a", resources=SLICE),
        None,
        "a pod that asks for gpulet.io/gpu, gpulet.io/gpu-core, gpulet.io/gpu-memory may not",
    ),
    (
        "non-gpulet pod with nodeName set",
        "CREATE",
        TENANT,
        pod(node="node-a", resources={"limits": {"nvidia.com/gpu": "1", "cpu": "2"}}),
        None,
        None,
    ),
    (
        "gpulet pod without nodeName",
        "CREATE",
        TENANT,
        pod(resources=SLICE, init_resources={"requests": {"cpu": "1"}}),
        None,
        None,
    ),
    (
        "mirror pod of a static gpulet pod, by its kubelet",
        "CREATE",
        KUBELET_A,
        pod(
            {"kubernetes.io/config.mirror": "0f3e", "kubernetes.io/config.source": "file"},
            node="node-a",
            resources=SLICE,
        ),
        None,
        None,
    ),
    (
        "node-like name without the nodes' group",
        "CREATE",
        NOT_A_NODE,
        pod(node="node-a", resources=SLICE),
        None,
        "may not be created with spec.nodeName set (node-a)",
    ),
    (
        "user updates a bound gpulet pod",
        "UPDATE",
        TENANT,
        bound(labels={"tier": "gold"}),
        bound(),
        None,
    ),
]

CASES = ASSIGNMENT_CASES + ALLOCATED_CASES + NODE_NAME_CASES


def node(name: str = "node-a", annotations: dict[str, str] | None = None, **spec: Any) -> Doc:
    meta: Doc = {"name": name, "labels": {"kubernetes.io/hostname": name}}
    if annotations is not None:
        meta["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "Node", "metadata": meta, "spec": dict(spec)}


HEARTBEAT = {"gpulet.io/heartbeat": "2026-12-06T00:00:00Z"}

#: The gpulet-agent policy: a node's agent and only its own Node and pods.
AGENT_CASES: list[Case] = [
    (
        "agent renews its node's heartbeat",
        "UPDATE",
        AGENT_A,
        node(annotations=HEARTBEAT),
        node(),
        None,
    ),
    (
        "agent publishes its node's topology",
        "UPDATE",
        AGENT_A,
        node(annotations={TOPOLOGY_ANNOTATION: "{}", **HEARTBEAT}),
        node(annotations=HEARTBEAT),
        None,
    ),
    (
        "agent removes the previous release's annotations from its node",
        "UPDATE",
        AGENT_A,
        node(annotations={"example.com/kept": "1"}),
        node(annotations={TOPOLOGY_ANNOTATION: "{}", "example.com/kept": "1", **HEARTBEAT}),
        None,
    ),
    (
        "agent with --legacy-annotations keep: heartbeat removed, topology rewritten",
        "UPDATE",
        AGENT_A,
        node(annotations={TOPOLOGY_ANNOTATION: '{"node": "node-a"}'}),
        node(annotations={TOPOLOGY_ANNOTATION: "{}", **HEARTBEAT}),
        None,
    ),
    (
        "agent removes another node's annotations",
        "UPDATE",
        AGENT_B,
        node(),
        node(annotations={TOPOLOGY_ANNOTATION: "{}", **HEARTBEAT}),
        "the gpulet agent of node node-b may not change node node-a",
    ),
    (
        "agent annotates another node",
        "UPDATE",
        AGENT_B,
        node(annotations=HEARTBEAT),
        node(),
        "the gpulet agent of node node-b may not change node node-a: only its own Node",
    ),
    (
        "agent cordons its node",
        "UPDATE",
        AGENT_A,
        node(unschedulable=True),
        node(),
        "may not change the spec, labels, finalizers or owners",
    ),
    (
        "agent annotates its node with another annotation",
        "UPDATE",
        AGENT_A,
        node(annotations={"example.com/x": "1"}),
        node(),
        "the gpulet agent may not change the annotations example.com/x of a Node",
    ),
    (
        "agent of the pod's node sets allocated",
        "UPDATE",
        AGENT_A,
        bound({ALLOCATED_ANNOTATION: ALLOCATED}),
        bound(),
        None,
    ),
    (
        "agent of another node sets allocated",
        "UPDATE",
        AGENT_B,
        bound({ALLOCATED_ANNOTATION: ALLOCATED}),
        bound(),
        "the gpulet agent of node node-b may not change a pod on node node-a",
    ),
    (
        "agent sets allocated on a pod bound to no node",
        "UPDATE",
        AGENT_A,
        pod({ALLOCATED_ANNOTATION: ALLOCATED}, resources=SLICE),
        pod(resources=SLICE),
        "the gpulet agent of node node-a may not change a pod bound to no node",
    ),
    (
        "agent whose token names no node",
        "UPDATE",
        AGENT_UNBOUND,
        bound({ALLOCATED_ANNOTATION: ALLOCATED}),
        bound(),
        "the gpulet agent's credentials name no node",
    ),
    (
        "agent relabels a pod of its node",
        "UPDATE",
        AGENT_A,
        bound(labels={"tier": "gold"}),
        bound(),
        "may not change the spec, labels, finalizers or owners",
    ),
    (
        "agent sets a pod's assignment",
        "UPDATE",
        AGENT_A,
        bound({ASSIGNMENT_ANNOTATION: ASSIGNMENT}),
        bound(),
        "the gpulet agent may not change the annotations gpulet.io/assignment of a pod",
    ),
    (
        "a tenant's update is not the agent's",
        "UPDATE",
        TENANT,
        bound(labels={"a": "b"}),
        bound(),
        None,
    ),
]

#: The gpulet-extender policy: a pod's assignment and nothing else.
EXTENDER_CASES: list[Case] = [
    (
        "extender sets the assignment",
        "UPDATE",
        EXTENDER,
        pod({ASSIGNMENT_ANNOTATION: ASSIGNMENT}, resources=SLICE),
        pod(resources=SLICE),
        None,
    ),
    (
        "extender relabels a pod",
        "UPDATE",
        EXTENDER,
        pod(labels={"tier": "gold"}, resources=SLICE),
        pod(resources=SLICE),
        "the gpulet extender may not change a pod's spec, labels, finalizers or owners",
    ),
    (
        "extender adds another annotation",
        "UPDATE",
        EXTENDER,
        pod({"example.com/x": "1"}, resources=SLICE),
        pod(resources=SLICE),
        "the gpulet extender may not change the annotations example.com/x of a pod",
    ),
    (
        "a look-alike account is not the extender",
        "UPDATE",
        LOOKALIKE,
        pod(labels={"tier": "gold"}, resources=SLICE),
        pod(resources=SLICE),
        None,
    ),
]


# --- what a node's agent writes about its node: its NodeTopology and its heartbeat Lease -----

NAMESPACE = nt.DEFAULT_NAMESPACE
#: The same machine for every node; only the names and owners differ.
MACHINE = shipped("pcie-4gpu")


def topology(
    name: str = "node-a", owners: list[Doc] | None = None, spec_node: str | None = None
) -> Doc:
    """The NodeTopology of `name` as the agent writes it, with other `owners` or another
    `spec.node` when given."""
    obj = node_topology_object(name, MACHINE)
    if owners is not None:
        obj["metadata"]["ownerReferences"] = owners
    if spec_node is not None:
        obj["spec"]["node"] = spec_node
    return obj


def owner(name: str, **fields: Any) -> Doc:
    """An ownerReference to Node `name` (other fields as given: apiVersion, kind, ...)."""
    return {"apiVersion": "v1", "kind": "Node", "name": name, "uid": node_uid(name), **fields}


def heartbeat(
    node: str = "node-a",
    renewed: float = 1_800_000_000.0,
    holder: str | None = None,
    labels: dict[str, str] | None = None,
    name: str | None = None,
) -> Doc:
    """The heartbeat Lease of `node` as the agent writes it, with another holder, labels or
    name when given."""
    obj = lease_object(node, renewed=renewed, pod=f"gpulet-agent-{node[-1]}x1")
    if holder is not None:
        obj["spec"]["holderIdentity"] = holder
    if labels is not None:
        obj["metadata"]["labels"] = labels
    if name is not None:
        obj["metadata"]["name"] = name
    return obj


#: A Lease of the namespace that is not a heartbeat: gpulet-scheduler's leader election.
LEADER_LEASE = heartbeat("x", labels={}, name="gpulet-scheduler", holder="gpulet-scheduler-1_x")
#: Another service account of the install namespace, with the right to write Leases there.
CONTROLLER_SA = pod_token("some-controller", "control-1")

#: The gpulet-node-reports policy: the agent of a node writes that node's NodeTopology and
#: Lease, as the contract has them, and no other; no other service account writes either.
REPORT_CASES: list[Case] = [
    ("agent creates its NodeTopology", "CREATE", AGENT_A, topology(), None, None),
    (
        "agent replaces its NodeTopology",
        "UPDATE",
        AGENT_A,
        topology(),
        topology(owners=[owner("node-a", uid="uid-of-the-node-before")]),
        None,
    ),
    ("agent creates its Lease", "CREATE", AGENT_A, heartbeat(), None, None),
    (
        "agent renews its Lease",
        "UPDATE",
        AGENT_A,
        heartbeat(renewed=1_800_000_020.25),
        heartbeat(),
        None,
    ),
    (
        "agent takes over its Lease from its previous pod",
        "UPDATE",
        AGENT_A,
        heartbeat(holder="node-a/gpulet-agent-new"),
        heartbeat(holder="node-a/gpulet-agent-old"),
        None,
    ),
    (
        "agent of node A writes NodeTopology B",
        "CREATE",
        AGENT_A,
        topology("node-b"),
        None,
        "the gpulet agent of node node-a may not write NodeTopology node-b: only its own "
        "node's, node-a",
    ),
    (
        "agent of node A replaces NodeTopology B",
        "UPDATE",
        AGENT_A,
        topology("node-b"),
        topology("node-b"),
        "the gpulet agent of node node-a may not write NodeTopology node-b",
    ),
    (
        "NodeTopology A owned by Node B",
        "CREATE",
        AGENT_A,
        topology(owners=[owner("node-b")]),
        None,
        "the gpulet agent of node node-a may not write NodeTopology node-a with these owners: "
        "its one owner is Node node-a (apiVersion v1), not blocking its deletion",
    ),
    (
        "NodeTopology A owned by Node A and Node B",
        "CREATE",
        AGENT_A,
        topology(owners=[owner("node-a"), owner("node-b")]),
        None,
        "may not write NodeTopology node-a with these owners",
    ),
    (
        "NodeTopology A owned by no one (it would outlive its Node)",
        "CREATE",
        AGENT_A,
        topology(owners=[]),
        None,
        "may not write NodeTopology node-a with these owners",
    ),
    (
        "NodeTopology A owned by a look-alike kind Node of another group",
        "CREATE",
        AGENT_A,
        topology(owners=[owner("node-a", apiVersion="example.com/v1")]),
        None,
        "may not write NodeTopology node-a with these owners",
    ),
    (
        "NodeTopology A owned by a Pod named node-a",
        "UPDATE",
        AGENT_A,
        topology(owners=[owner("node-a", kind="Pod")]),
        topology(),
        "may not write NodeTopology node-a with these owners",
    ),
    (
        "NodeTopology A blocking its Node's deletion",
        "CREATE",
        AGENT_A,
        topology(owners=[owner("node-a", blockOwnerDeletion=True)]),
        None,
        "may not write NodeTopology node-a with these owners",
    ),
    (
        "NodeTopology A not blocking with false said",
        "CREATE",
        AGENT_A,
        topology(owners=[owner("node-a", blockOwnerDeletion=False)]),
        None,
        None,
    ),
    (
        "NodeTopology A that says it is node B",
        "CREATE",
        AGENT_A,
        topology(spec_node="node-b"),
        None,
        "the gpulet agent of node node-a may not write NodeTopology node-a with spec.node "
        "node-b: only node-a",
    ),
    (
        "agent of node A renews the Lease of node B",
        "UPDATE",
        AGENT_A,
        heartbeat("node-b", renewed=1_800_000_020.0),
        heartbeat("node-b"),
        "the gpulet agent of node node-a may not write Lease gpulet-node-node-b: only its own "
        "node's, gpulet-node-node-a",
    ),
    (
        "agent of node A creates the Lease of node B",
        "CREATE",
        AGENT_A,
        heartbeat("node-b", holder="node-a/gpulet-agent-ax1"),
        None,
        "the gpulet agent of node node-a may not write Lease gpulet-node-node-b",
    ),
    (
        "Lease A held by node B's agent",
        "UPDATE",
        AGENT_A,
        heartbeat(holder="node-b/gpulet-agent-bx1"),
        heartbeat(),
        "the gpulet agent of node node-a may not write Lease gpulet-node-node-a held by "
        "node-b/gpulet-agent-bx1: its holderIdentity starts with node-a/",
    ),
    (
        "Lease A held by a node whose name starts with A's",
        "CREATE",
        AGENT_A,
        heartbeat(holder="node-a-evil/x"),
        None,
        "held by node-a-evil/x",
    ),
    (
        "Lease A held by no one",
        "CREATE",
        AGENT_A,
        heartbeat(holder=""),
        None,
        "its holderIdentity starts with node-a/",
    ),
    (
        "unlabelled Lease A",
        "CREATE",
        AGENT_A,
        heartbeat(labels={}),
        None,
        "the gpulet agent of node node-a may not write Lease gpulet-node-node-a without the "
        "labels app.kubernetes.io/name=gpulet-agent, app.kubernetes.io/component=heartbeat",
    ),
    (
        "Lease A relabelled on renewal",
        "UPDATE",
        AGENT_A,
        heartbeat(labels={"app.kubernetes.io/name": "gpulet-agent"}),
        heartbeat(),
        "without the labels",
    ),
    (
        "agent writes a Lease that is no heartbeat",
        "UPDATE",
        AGENT_A,
        LEADER_LEASE,
        LEADER_LEASE,
        "the gpulet agent of node node-a may not write Lease gpulet-scheduler",
    ),
    (
        "agent whose token names no node writes a NodeTopology",
        "CREATE",
        AGENT_UNBOUND,
        topology(),
        None,
        "the gpulet agent's credentials name no node",
    ),
    (
        "agent whose token names no node renews a Lease",
        "UPDATE",
        AGENT_UNBOUND,
        heartbeat(renewed=1_800_000_020.0),
        heartbeat(),
        "the gpulet agent's credentials name no node",
    ),
    (
        "the extender's account creates a heartbeat",
        "CREATE",
        EXTENDER,
        heartbeat(holder="node-a/forged"),
        None,
        "system:serviceaccount:kube-system:gpulet-scheduler may not write Lease "
        "gpulet-node-node-a: only the gpulet agent of its node does",
    ),
    (
        "the extender's account writes a NodeTopology",
        "UPDATE",
        EXTENDER,
        topology(),
        topology(),
        "system:serviceaccount:kube-system:gpulet-scheduler may not write NodeTopology node-a",
    ),
    (
        "a tenant's pod writes a NodeTopology",
        "CREATE",
        TENANT_POD,
        topology(),
        None,
        "system:serviceaccount:team-a:default may not write NodeTopology node-a",
    ),
    (
        "another service account renews a heartbeat",
        "UPDATE",
        CONTROLLER_SA,
        heartbeat(renewed=1_800_000_020.0),
        heartbeat(),
        "system:serviceaccount:kube-system:some-controller may not write Lease",
    ),
    (
        "another service account's Lease that is no heartbeat",
        "UPDATE",
        EXTENDER,
        LEADER_LEASE,
        LEADER_LEASE,
        None,
    ),
    # People and the control plane's own users are RBAC's to judge, not the policy's.
    ("a person writes a NodeTopology", "CREATE", TENANT, topology(), None, None),
    (
        "a control-plane user renews a heartbeat",
        "UPDATE",
        User("system:kube-controller-manager", ("system:authenticated",)),
        heartbeat(renewed=1_800_000_020.0),
        heartbeat(),
        None,
    ),
]


def node_status(
    name: str = "node-a",
    capacity: dict[str, str] | None = None,
    allocatable: dict[str, str] | None = None,
    **status: Any,
) -> Doc:
    """A Node as kubelet keeps it (conditions, addresses, capacity), with these changes."""
    doc = node(name)
    base = {"cpu": "64", "memory": "512Gi", "pods": "110", GPU_RESOURCE: "32"}
    doc["status"] = {
        "capacity": {**base, **(capacity or {})},
        "allocatable": {**base, **(allocatable or {})},
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
        "addresses": [{"type": "InternalIP", "address": "10.0.0.1"}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
        "nodeInfo": {"kubeletVersion": "v1.37.2"},
    }
    doc["status"].update(status)
    return doc


AGGREGATES = {CORE_RESOURCE: "800", MEMORY_RESOURCE: "652688"}
BATCH = {"gpulet.io/batch-gpu-core": "420", "gpulet.io/batch-gpu-memory": "301234"}

#: The gpulet-node-status policy: a node's agent writes its own Node's aggregates, and only them.
NODE_STATUS_CASES: list[Case] = [
    (
        "agent advertises its node's aggregates",
        "UPDATE",
        AGENT_A,
        node_status(capacity=AGGREGATES, allocatable=AGGREGATES),
        node_status(),
        None,
    ),
    (
        "agent advertises them again after kubelet zeroed them",
        "UPDATE",
        AGENT_A,
        node_status(capacity=AGGREGATES, allocatable=AGGREGATES),
        node_status(
            capacity={CORE_RESOURCE: "0", MEMORY_RESOURCE: "0"},
            allocatable={CORE_RESOURCE: "0", MEMORY_RESOURCE: "0"},
        ),
        None,
    ),
    (
        "agent advertises its node's batch aggregates, measured",
        "UPDATE",
        AGENT_A,
        node_status(capacity={**AGGREGATES, **BATCH}, allocatable={**AGGREGATES, **BATCH}),
        node_status(capacity=AGGREGATES, allocatable=AGGREGATES),
        None,
    ),
    (
        "agent advertises another node's aggregates",
        "UPDATE",
        AGENT_B,
        node_status(capacity=AGGREGATES, allocatable=AGGREGATES),
        node_status(),
        "the gpulet agent of node node-b may not change the status of node node-a",
    ),
    (
        "agent inflates its node's gpulet.io/gpu",
        "UPDATE",
        AGENT_A,
        node_status(capacity={GPU_RESOURCE: "64"}, allocatable={GPU_RESOURCE: "64"}),
        node_status(),
        "may not change the capacity or allocatable of gpulet.io/gpu, gpulet.io/gpu: only",
    ),
    (
        "agent advertises cpu it does not have",
        "UPDATE",
        AGENT_A,
        node_status(allocatable={"cpu": "128", **AGGREGATES}),
        node_status(),
        "may not change the capacity or allocatable of cpu",
    ),
    (
        "agent removes kubelet's memory",
        "UPDATE",
        AGENT_A,
        {**node_status(), "status": {**node_status()["status"], "capacity": {"cpu": "64"}}},
        node_status(),
        "may not change the capacity or allocatable of memory, pods, gpulet.io/gpu",
    ),
    (
        "agent marks its node Ready",
        "UPDATE",
        AGENT_A,
        node_status(conditions=[{"type": "Ready", "status": "True", "reason": "Forged"}]),
        node_status(conditions=[{"type": "Ready", "status": "False", "reason": "Down"}]),
        "may not change a Node's conditions, addresses",
    ),
    (
        "agent moves its node's kubelet endpoint",
        "UPDATE",
        AGENT_A,
        node_status(daemonEndpoints={"kubeletEndpoint": {"Port": 1}}),
        node_status(),
        "may not change a Node's conditions, addresses",
    ),
    (
        "agent labels its node through its status",
        "UPDATE",
        AGENT_A,
        {**node_status(), "metadata": {**node("node-a")["metadata"], "labels": {"x": "y"}}},
        node_status(),
        "may not change a Node's conditions, addresses",
    ),
    (
        "agent with a token naming no node",
        "UPDATE",
        AGENT_UNBOUND,
        node_status(capacity=AGGREGATES, allocatable=AGGREGATES),
        node_status(),
        "the gpulet agent's credentials name no node",
    ),
    # kubelet and people are RBAC's and NodeRestriction's to judge, not the policy's.
    (
        "kubelet updates its status",
        "UPDATE",
        KUBELET_A,
        node_status(phase="Running"),
        node_status(),
        None,
    ),
]

SCOPED_CASES = (
    [("gpulet-agent", c) for c in AGENT_CASES]
    + [("gpulet-node-status", c) for c in NODE_STATUS_CASES]
    + [("gpulet-extender", c) for c in EXTENDER_CASES]
    + [("gpulet-node-reports", c) for c in REPORT_CASES]
)


#: Every case, with the policy that decides it.
ALL_CASES = [("gpulet-pods", c) for c in CASES] + SCOPED_CASES


@pytest.mark.parametrize(("name", "case"), ALL_CASES, ids=[f"{n}: {c[0]}" for n, c in ALL_CASES])
def test_the_policy_decides(source: str, name: str, case: Case) -> None:
    _, operation, user, new, old, expected = case
    policy = compiled(source, name)
    decisions = policy.decide(operation, user, new, old)
    # No expression fails on any of these: with failurePolicy Fail, an error would refuse the
    # request whatever it is, and say nothing useful.
    assert [d.error for d in decisions] == [""] * len(decisions)
    message = policy.admit(operation, user, new, old)
    if expected is None:
        assert message is None
    else:
        assert message is not None
        assert expected in message, message
        # The pods' and the node reports' policies name who asked (their messageExpressions,
        # not the static fallback); the accounts' policies name the account they hold.
        starts = {
            "gpulet-pods": ("a pod that", "the gpulet agent", user.username),
            "gpulet-node-reports": ("the gpulet agent", user.username),
        }.get(name, ("the gpulet agent", "the gpulet extender"))
        assert message.startswith(starts), message


def test_a_minimal_pod_passes_every_validation_without_error(policy: Policy) -> None:
    """A pod with nothing but its containers (no annotations, resources, nodeName, init
    containers), as every kind of user, on CREATE and UPDATE: admitted, and no expression
    errs (an error would refuse every such pod in the cluster)."""
    bare: Doc = {
        "metadata": {"name": "p", "namespace": "ns"},
        "spec": {"containers": [{"name": "c"}]},
    }
    users = [TENANT, EXTENDER, AGENT_A, AGENT_UNBOUND, KUBELET_A, User("system:anonymous")]
    for user in users:
        for operation, old in (("CREATE", None), ("UPDATE", bare)):
            decisions = policy.decide(operation, user, bare, old)
            assert decisions
            assert all(not d.deny and not d.error for d in decisions), (user, operation)


def test_every_expression_compiles(policy: Policy) -> None:
    for program in policy.programs():
        compile_expression(program.expression)  # raises on a syntax error


# --- the policy's shape -----------------------------------------------------------------------


@pytest.mark.parametrize("name", POLICIES)
def test_the_binding_denies_with_the_policy(source: str, name: str) -> None:
    docs = SOURCES[source]()
    policy, binding = (
        of_kind(docs, k, name)
        for k in ("ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding")
    )
    assert policy["apiVersion"] == binding["apiVersion"] == "admissionregistration.k8s.io/v1"
    assert binding["spec"]["policyName"] == policy["metadata"]["name"]
    assert binding["spec"]["validationActions"] == ["Deny"]
    # No narrowing of its own: the binding applies the policy wherever the policy matches.
    assert set(binding["spec"]) == {"policyName", "validationActions"}
    spec = policy["spec"]
    assert spec["failurePolicy"] == "Fail"
    assert "paramKind" not in spec
    # The accounts' policies apply to their account alone; the pods' to everyone.
    assert ("matchConditions" in spec) == (name != "gpulet-pods")
    assert {d["metadata"]["name"] for d in docs if d["kind"] == "ValidatingAdmissionPolicy"} == set(
        POLICIES
    )


@pytest.mark.parametrize("source", ["deploy", pytest.param("chart", marks=needs_helm)])
def test_the_policy_matches_pod_creates_and_updates_of_the_main_resource(source: str) -> None:
    constraints = of_kind(SOURCES[source](), "ValidatingAdmissionPolicy")["spec"][
        "matchConstraints"
    ]
    # Every namespace, every pod: no selectors, no exclusions.
    assert set(constraints) == {"resourceRules"}
    (rule,) = constraints["resourceRules"]
    assert rule["apiGroups"] == [""]
    assert rule["apiVersions"] in (["v1"], ["*"])
    assert set(rule["operations"]) == {"CREATE", "UPDATE"}
    # pods, not pods/status (kubelet's status updates) nor pods/*.
    assert rule["resources"] == ["pods"]
    assert rule.get("scope", "*") in ("*", "Namespaced")


def literal(policy: Doc, variable: str) -> str:
    (expression,) = [v["expression"] for v in policy["spec"]["variables"] if v["name"] == variable]
    value = evaluate(expression)
    assert isinstance(value, celtypes.StringType), expression
    return str(value)


def test_the_usernames_are_the_extenders_and_the_agents_service_accounts() -> None:
    objects = kustomize("sidecar")
    namespace = "kube-system"

    def account(kind: str, name: str) -> str:
        (workload,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
        assert workload["metadata"]["namespace"] == namespace
        sa = workload["spec"]["template"]["spec"]["serviceAccountName"]
        return f"system:serviceaccount:{namespace}:{sa}"

    policy = of_kind(static_documents(), "ValidatingAdmissionPolicy")
    assert literal(policy, "extender") == account("Deployment", "gpulet-scheduler")
    assert literal(policy, "agent") == account("DaemonSet", "gpulet-agent")
    conditions = {
        name: of_kind(static_documents(), "ValidatingAdmissionPolicy", name)["spec"][
            "matchConditions"
        ][0]["expression"]
        for name in ("gpulet-agent", "gpulet-extender")
    }
    assert (
        conditions["gpulet-agent"] == f"request.userInfo.username == '{literal(policy, 'agent')}'"
    )
    assert conditions["gpulet-extender"] == (
        f"request.userInfo.username == '{literal(policy, 'extender')}'"
    )
    # The node reports' policy: the agent's account in its condition and its first rule.
    reports = of_kind(static_documents(), "ValidatingAdmissionPolicy", "gpulet-node-reports")
    (condition,) = reports["spec"]["matchConditions"]
    agent = f"request.userInfo.username == '{literal(policy, 'agent')}'"
    assert condition["expression"].startswith(agent + " ")
    assert reports["spec"]["validations"][0]["expression"] == agent


@needs_helm
def test_the_chart_names_the_accounts_of_its_own_namespace() -> None:
    policy = of_kind(rendered_documents("gpu-system"), "ValidatingAdmissionPolicy")
    assert literal(policy, "extender") == "system:serviceaccount:gpu-system:gpulet-scheduler"
    assert literal(policy, "agent") == "system:serviceaccount:gpu-system:gpulet-agent"
    # ...and the policy follows them: the extender of gpu-system may, kube-system's may not.
    checker = Policy(policy)
    new = pod({ASSIGNMENT_ANNOTATION: ASSIGNMENT}, resources=SLICE)
    old = pod(resources=SLICE)
    extender = pod_token("gpulet-scheduler", "c", "gpu-system")
    assert checker.admit("UPDATE", extender, new, old) is None
    assert checker.admit("UPDATE", EXTENDER, new, old) is not None


@needs_helm
def test_the_chart_holds_the_agent_of_its_own_namespace_to_its_node() -> None:
    reports = of_kind(
        rendered_documents("gpu-system"), "ValidatingAdmissionPolicy", "gpulet-node-reports"
    )
    checker = Policy(reports)
    lease = heartbeat()
    lease["metadata"]["namespace"] = "gpu-system"
    agent_a = pod_token("gpulet-agent", "node-a", "gpu-system")
    assert checker.admit("CREATE", agent_a, topology()) is None
    assert checker.admit("CREATE", agent_a, lease) is None
    refused = checker.admit("CREATE", agent_a, topology("node-b"))
    assert refused is not None and "may not write NodeTopology node-b" in refused
    # kube-system's agent account is another namespace's service account here.
    refused = checker.admit("CREATE", AGENT_A, topology())
    assert refused is not None and refused.startswith(AGENT_A.username + " may not write")
    selector = reports["spec"]["matchConstraints"]["namespaceSelector"]
    assert selector == {"matchLabels": {"kubernetes.io/metadata.name": "gpu-system"}}


@needs_helm
def test_the_chart_can_leave_the_policy_out() -> None:
    kinds = {d["kind"] for d in render("admissionPolicy.enabled=false")}
    assert "ValidatingAdmissionPolicy" not in kinds
    assert "ValidatingAdmissionPolicyBinding" not in kinds
    assert {"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"} <= {
        d["kind"] for d in render()
    }


def test_the_chart_values_schema_takes_the_switch_and_nothing_else() -> None:
    chart = DEPLOY / "helm" / "gpulet"
    (values,) = yaml.safe_load_all((chart / "values.yaml").read_text())
    schema = json.loads((chart / "values.schema.json").read_text())
    assert values["admissionPolicy"] == {"enabled": True}
    jsonschema.validate(values, schema)
    for bad in ({"enabled": "yes"}, {"enable": False}, {}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({**values, "admissionPolicy": bad}, schema)


def test_the_policy_names_gpulets_own_resources_and_annotations() -> None:
    policy = of_kind(static_documents(), "ValidatingAdmissionPolicy")
    (expression,) = [
        v["expression"] for v in policy["spec"]["variables"] if v["name"] == "gpuletResources"
    ]
    listed = re.findall(r"'(gpulet\.io/[\w-]+)'", expression)
    assert sorted(listed) == sorted(MANAGED_RESOURCES)
    text = POLICY_FILE.read_text()
    assert f"'{ASSIGNMENT_ANNOTATION}'" in text and f"'{ALLOCATED_ANNOTATION}'" in text


def test_the_node_reports_policy_matches_nodetopology_and_lease_writes(source: str) -> None:
    """Creates and updates of every NodeTopology, and of the Leases of the install namespace
    only (where the agents' heartbeats are, and the extender watches)."""
    constraints = of_kind(SOURCES[source](), "ValidatingAdmissionPolicy", "gpulet-node-reports")[
        "spec"
    ]["matchConstraints"]
    assert constraints["namespaceSelector"] == {
        "matchLabels": {"kubernetes.io/metadata.name": NAMESPACE}
    }
    assert "objectSelector" not in constraints
    rules = {
        (group, version, resource): set(rule["operations"])
        for rule in constraints["resourceRules"]
        for group in rule["apiGroups"]
        for version in rule["apiVersions"]
        for resource in rule["resources"]
    }
    assert rules == {
        (nt.GROUP, nt.VERSION, nt.PLURAL): {"CREATE", "UPDATE"},
        ("coordination.k8s.io", "v1", "leases"): {"CREATE", "UPDATE"},
    }


def test_the_node_reports_policy_names_the_contracts_names() -> None:
    """The Lease prefix and labels, and the resource, as gpulet.api.nodetopology has them."""
    policy = Policy(of_kind(static_documents(), "ValidatingAdmissionPolicy", "gpulet-node-reports"))
    text = " ".join(" ".join(p.expression.split()) for p in policy.programs())
    assert text.count(f"'{nt.LEASE_PREFIX}'") == 2  # the condition and the Lease's own name
    for label, value in nt.LEASE_LABELS.items():
        assert f"variables.labels['{label}'] == '{value}'" in text
    assert f"'{nt.PLURAL}'" in text


@pytest.mark.parametrize("operation", ["CREATE", "UPDATE"])
def test_a_bare_nodetopology_or_lease_errs_for_no_one(source: str, operation: str) -> None:
    """Objects with nothing but their names (no labels, owners, spec), as every kind of user:
    no expression errs (with failurePolicy Fail an error refuses, and says nothing)."""
    policy = compiled(source, "gpulet-node-reports")
    bare_topology: Doc = {
        "apiVersion": nt.API_VERSION,
        "kind": nt.KIND,
        "metadata": {"name": "node-a"},
    }
    bare_lease: Doc = {
        "apiVersion": nt.LEASE_API_VERSION,
        "kind": "Lease",
        "metadata": {"name": nt.lease_name("node-a"), "namespace": NAMESPACE},
    }
    users = [TENANT, EXTENDER, AGENT_A, AGENT_UNBOUND, CONTROLLER_SA, User("system:anonymous")]
    for user in users:
        for obj in (bare_topology, bare_lease):
            old = obj if operation == "UPDATE" else None
            decisions = policy.decide(operation, user, obj, old)
            assert all(not d.error for d in decisions), (user, obj, decisions)
            # Refused to every service account (the agent's: it says nothing), left to
            # RBAC for the others.
            assert any(d.deny for d in decisions) == user.username.startswith(
                "system:serviceaccount:"
            ), (user, obj)


# --- the fields the expressions read exist where the API puts them ----------------------------

#: The AdmissionRequest fields Kubernetes declares for `request` (BuildRequestType).
REQUEST_FIELDS = {
    "kind", "kind.group", "kind.version", "kind.kind",
    "resource", "resource.group", "resource.version", "resource.resource",
    "subResource", "requestKind", "requestResource", "requestSubResource",
    "name", "namespace", "operation", "dryRun", "options",
    "userInfo", "userInfo.username", "userInfo.uid", "userInfo.groups", "userInfo.extra",
}  # fmt: skip


def _definitions(version: str) -> Doc:
    defs: Doc = schema_contents(
        f"kubernetes-json-schema/v{version}.0-local-strict/_definitions.json", version
    )["$defs"]
    return defs


def _resolve(schema: Doc, defs: Doc) -> Doc:
    while "$ref" in schema:
        schema = defs[schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def _has_path(schema: Doc, path: list[str], defs: Doc) -> bool:
    for part in path:
        schema = _resolve(schema, defs)
        if part in schema.get("properties", {}):
            schema = schema["properties"][part]
        else:
            # A map's keys (annotations, requests) are data, not fields: nothing to check.
            # (The strict schemas close every object with additionalProperties: false.)
            return isinstance(schema.get("additionalProperties"), dict)
    return True


def _paths(expression: str, root: str) -> set[str]:
    """The field paths `root.a.b...` an expression reads (string literals left out, a method
    call's name too)."""
    code = re.sub(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"", "''", expression)
    found = set()
    for m in re.finditer(rf"(?<![\w.]){root}((?:\s*\.\s*\w+)+)(\s*\()?", code):
        parts = [p.strip() for p in m.group(1).split(".") if p.strip()]
        if m.group(2):
            parts = parts[:-1]  # .startsWith(...), .exists(...)
        if parts:
            found.add(".".join(parts))
    return found


def node_topology_schema() -> Doc:
    """A NodeTopology's schema as the API server has it: the CRD's, with ObjectMeta's."""
    (version,) = node_topology_crd()["spec"]["versions"]
    schema: Doc = version["schema"]["openAPIV3Schema"]
    schema["properties"]["metadata"] = {
        "$ref": "#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
    }
    return schema


@pytest.mark.parametrize("version", ["1.30", "1.31"])
@pytest.mark.parametrize("name", POLICIES)
def test_every_field_read_is_in_the_api_schema(version: str, name: str) -> None:
    policy = Policy(of_kind(static_documents(), "ValidatingAdmissionPolicy", name))
    defs = _definitions(version)
    pod_schema = defs["io.k8s.api.core.v1.Pod"]
    # The agent's policy is about Nodes too: a field it reads is a Pod's or a Node's; the
    # node reports' a NodeTopology's (the CRD's schema, metadata an ObjectMeta) or a Lease's.
    objects = {
        "gpulet-agent": [pod_schema, defs["io.k8s.api.core.v1.Node"]],
        "gpulet-node-status": [defs["io.k8s.api.core.v1.Node"]],
        "gpulet-node-reports": [node_topology_schema(), defs["io.k8s.api.coordination.v1.Lease"]],
    }.get(name, [pod_schema])
    container = defs["io.k8s.api.core.v1.Container"]
    variables = {name for name, _ in policy.variables}
    read: dict[str, set[str]] = {"object": set(), "request": set(), "c": set(), "variables": set()}
    for program in policy.programs():
        for root in read:
            read[root] |= _paths(program.expression, root)
    read["object"] |= {
        p for program in policy.programs() for p in _paths(program.expression, "oldObject")
    }
    assert read["object"] and read["request"]
    # The check itself catches a misspelt field (which has() would silently call absent).
    assert not _has_path(pod_schema, ["spec", "initContainer"], defs)
    assert not _has_path(container, ["resource", "limits"], defs)
    for path in read["object"]:
        assert any(_has_path(o, path.split("."), defs) for o in objects), f"object.{path}"
    for path in read["c"]:
        assert _has_path(container, path.split("."), defs), f"c.{path}"
    for path in read["request"]:
        assert path in REQUEST_FIELDS, f"request.{path}"
    assert read["variables"] <= variables


# --- Kubernetes' CEL as tests/cel_k8s.py gives it ---------------------------------------------


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("['a', 'b', 'c'].join(', ')", "a, b, c"),
        ("['a', 'b'].join()", "ab"),
        ("['x'].join('-')", "x"),
        ("[].join('-')", ""),
        ("['a', 'b'].join('')", "ab"),
    ],
)
def test_join_is_the_strings_librarys(expression: str, expected: str) -> None:
    # cel-go's strings extension (ext/strings.go): the list's strings concatenated in order,
    # with the optional separator between each two of them.
    assert evaluate(expression) == celtypes.StringType(expected)


@pytest.mark.parametrize("expression", ["[1, 2].join(',')", "['a'].join(1)", "'ab'.join(',')"])
def test_join_of_anything_but_strings_is_an_error(expression: str) -> None:
    assert isinstance(evaluate(expression), CELEvalError)


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("has(o.a)", True),
        ("has(o.z)", False),
        ("has(o.a.b)", True),
        ("has(o.a.c)", False),
        ("has(o.e.f)", False),  # an empty map
    ],
)
def test_has_tests_a_maps_field(expression: str, expected: bool) -> None:
    assert evaluate(expression, o={"a": {"b": 1}, "e": {}}) == celtypes.BoolType(expected)


@pytest.mark.parametrize("expression", ["has(o.z.b)", "has(n.a)", "has(o.s.x)"])
def test_has_on_a_missing_field_or_a_non_map_is_an_error(expression: str) -> None:
    # cel-go: the operand is evaluated first and its error (no such key) is the result; a
    # field test on null or on a string has no overload. celpy alone answers false.
    assert isinstance(evaluate(expression, o={"a": {}, "s": "str"}, n=None), CELEvalError)


def test_errors_are_absorbed_by_logical_operators_as_in_cel_go() -> None:
    # CEL's && and || are commutative over errors: `true || error` and `error || true` are
    # true, `false && error` and `error && false` false. The policy's guards rely on it.
    o = {"a": 1}
    assert evaluate("true || o.z == 1", o=o) == celtypes.BoolType(True)
    assert evaluate("o.z == 1 || true", o=o) == celtypes.BoolType(True)
    assert evaluate("o.z == 1 && false", o=o) == celtypes.BoolType(False)
    assert isinstance(evaluate("o.z == 1 || false", o=o), CELEvalError)


def test_variables_see_earlier_ones_and_errors_surface_where_used() -> None:
    checker = Policy(
        {
            "spec": {
                "variables": [
                    {"name": "a", "expression": "object.metadata.name + '-a'"},
                    {"name": "b", "expression": "variables.a + '-b'"},
                    {"name": "broken", "expression": "object.spec.nodeName"},
                ],
                "validations": [
                    {"expression": "variables.b == 'p-a-b'"},
                    {"expression": "variables.broken == 'x'", "message": "m"},
                    {"expression": "true || variables.broken == 'x'"},
                    {
                        "expression": "variables.a == 'nope'",
                        "messageExpression": "'got ' + variables.a",
                    },
                    {"expression": "false", "messageExpression": "variables.broken"},
                ],
            }
        }
    )
    bare: Doc = {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c"}]}}
    first, broken, absorbed, message, fallback = checker.decide("CREATE", TENANT, bare)
    assert first.deny is False and first.error == ""
    assert broken.deny is True and "nodeName" in broken.error  # failurePolicy Fail
    assert absorbed.deny is False and absorbed.error == ""
    assert message.deny is True and message.message == "got p-a"
    # A failing messageExpression falls back to the expression itself (no message given).
    assert fallback.deny is True and fallback.message == "failed expression: false"
