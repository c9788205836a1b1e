"""What gpulet's own accounts may do, asked of a real kube-apiserver with deploy/'s RBAC and
admission policies: a node's agent, with the token kubelet gives its pod (which names the
node), changes its own Node and the pods bound to it, and of them only gpulet's annotations,
and writes its own node's NodeTopology and heartbeat Lease and no other; the extender changes a
pod's assignment annotation and nothing else, and reads the NodeTopologies and heartbeats
without writing either. Each attack is what a stolen token would try."""

from __future__ import annotations

import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from gpulet.api import nodetopology as nt
from gpulet.api.resources import (
    ALLOCATED_ANNOTATION,
    ASSIGNMENT_ANNOTATION,
    CORE_RESOURCE,
    GPU_RESOURCE,
    HEARTBEAT_ANNOTATION,
    TOPOLOGY_ANNOTATION,
)
from gpulet.standins.objects import container, lease_object, node_topology_object
from tests.e2e.conftest import SCHEDULER, World, agent_kubeconfig
from tests.e2e.test_real_kubernetes import create, new_pod
from tests.nodes import shipped

pytestmark = pytest.mark.e2e

A, B = "gpu-a", "gpu-b"


def as_user(kubeconfig: Path) -> Any:
    api = config.new_client_from_config(config_file=str(kubeconfig))  # type: ignore[no-untyped-call]
    return client.CoreV1Api(api)


def agent_of(world: World, node: str) -> Any:
    """The credentials the agent of `node` runs with."""
    args = world.nodes[node].agent_args
    return as_user(Path(args[args.index("--kubeconfig") + 1]))


@pytest.fixture
def pods(world: World, ns: str) -> dict[str, str]:
    """A plain pod bound to each node: node -> pod name. (Bound is what the policies judge;
    whether the node runs it does not matter here.)"""
    names = {A: "on-a", B: "on-b"}
    for node, name in names.items():
        pod = new_pod(name, container("main"))
        pod["spec"]["nodeName"] = node  # no gpulet resource: the admission policy allows it
        create(world, ns, pod)
    return names


def refused(call: Callable[[], object]) -> str:
    with pytest.raises(ApiException) as denied:
        call()
    assert denied.value.status in (403, 422), denied.value
    return str(denied.value.body)


def annotate(value: str | None, key: str) -> dict[str, Any]:
    return {"metadata": {"annotations": {key: value}}}


def test_an_agent_changes_no_other_node_and_no_pod_on_one(
    world: World, ns: str, pods: dict[str, str]
) -> None:
    agent = agent_of(world, A)
    body = refused(lambda: agent.patch_node(B, annotate("{}", TOPOLOGY_ANNOTATION)))
    assert f"the gpulet agent of node {A} may not change node {B}" in body
    body = refused(
        lambda: agent.patch_namespaced_pod(pods[B], ns, annotate("{}", ALLOCATED_ANNOTATION))
    )
    assert f"may not change a pod on node {B}" in body
    assert ALLOCATED_ANNOTATION not in (world.pod(ns, pods[B])["metadata"].get("annotations") or {})


def test_an_agent_changes_only_gpulets_annotations_on_its_own_node(
    world: World, ns: str, pods: dict[str, str]
) -> None:
    agent = agent_of(world, A)
    # What it is for.
    agent.patch_node(A, annotate("2026-12-06T00:00:00Z", HEARTBEAT_ANNOTATION))
    # ... and removing it, as it does the previous release's (leaving none behind).
    agent.patch_node(A, annotate(None, HEARTBEAT_ANNOTATION))
    assert HEARTBEAT_ANNOTATION not in (world.core.read_node(A).metadata.annotations or {})
    agent.patch_namespaced_pod(pods[A], ns, annotate('{"version":1}', ALLOCATED_ANNOTATION))
    # What a stolen token would do with `patch`.
    attacks: dict[str, Callable[[], object]] = {
        "cordon its node": lambda: agent.patch_node(A, {"spec": {"unschedulable": True}}),
        "relabel its node": lambda: agent.patch_node(
            A, {"metadata": {"labels": {"node-role.kubernetes.io/control-plane": ""}}}
        ),
        "swap a pod's image": lambda: agent.patch_namespaced_pod(
            pods[A], ns, {"spec": {"containers": [{"name": "main", "image": "evil:1"}]}}
        ),
        "annotate a pod": lambda: agent.patch_namespaced_pod(
            pods[A], ns, annotate("x", "example.com/other")
        ),
        "set a pod's assignment": lambda: agent.patch_namespaced_pod(
            pods[A], ns, annotate("{}", ASSIGNMENT_ANNOTATION)
        ),
        "hold a pod with a finalizer": lambda: agent.patch_namespaced_pod(
            pods[A], ns, {"metadata": {"finalizers": ["example.com/hold"]}}
        ),
    }
    for what, attack in attacks.items():
        body = refused(attack)
        assert "gpulet" in body, (what, body)
    node = world.json(world.core.read_node(A))
    assert not node["spec"].get("unschedulable")
    assert "node-role.kubernetes.io/control-plane" not in node["metadata"]["labels"]
    pod = world.pod(ns, pods[A])
    assert pod["spec"]["containers"][0]["image"] != "evil:1"
    assert not pod["metadata"].get("finalizers")
    assert "example.com/other" not in pod["metadata"]["annotations"]


def test_an_agent_writes_only_its_own_nodes_aggregates_in_its_status(world: World) -> None:
    """`patch` on nodes/status is for every node and every field: the gpulet-node-status
    policy holds the agent to its own Node's gpulet.io/gpu-core and gpu-memory."""
    agent = agent_of(world, A)
    before = world.json(world.core.read_node(A))["status"]
    core = before["capacity"][CORE_RESOURCE]
    # What it is for: its aggregates (as they are: the policy judges changes).
    same = {CORE_RESOURCE: core}
    agent.patch_node_status(A, {"status": {"capacity": same, "allocatable": same}})
    forged_ready = [{**c, "reason": "Forged"} for c in before["conditions"]]
    attacks: dict[str, Callable[[], object]] = {
        "advertise another node's": lambda: agent.patch_node_status(
            B, {"status": {"capacity": {CORE_RESOURCE: "1600"}}}
        ),
        "inflate gpulet.io/gpu": lambda: agent.patch_node_status(
            A, {"status": {"allocatable": {GPU_RESOURCE: "100000"}}}
        ),
        "add cpu": lambda: agent.patch_node_status(A, {"status": {"capacity": {"cpu": "4096"}}}),
        "forge a condition": lambda: agent.patch_node_status(
            A, {"status": {"conditions": forged_ready}}
        ),
    }
    for what, attack in attacks.items():
        body = refused(attack)
        assert "gpulet-node-status" in body, (what, body)
    after = world.json(world.core.read_node(A))["status"]
    assert after["allocatable"][GPU_RESOURCE] == before["allocatable"][GPU_RESOURCE]
    assert after["capacity"]["cpu"] == before["capacity"]["cpu"]
    assert all(c.get("reason") != "Forged" for c in after["conditions"])
    assert world.json(world.core.read_node(B))["status"]["capacity"][CORE_RESOURCE] != "1600"


def test_an_agent_token_that_names_no_node_changes_nothing(
    world: World, ns: str, pods: dict[str, str]
) -> None:
    """A token not bound to a pod (a legacy Secret, a TokenRequest by hand) names no node:
    the agent's policy fails closed rather than let it act on every node."""
    unbound = as_user(world.cp.service_account_kubeconfig("kube-system", "gpulet-agent"))
    body = refused(lambda: unbound.patch_node(A, annotate("x", HEARTBEAT_ANNOTATION)))
    assert "credentials name no node" in body
    refused(lambda: unbound.patch_namespaced_pod(pods[A], ns, annotate("{}", ALLOCATED_ANNOTATION)))


def test_an_agent_creates_and_deletes_no_pod(world: World, ns: str, pods: dict[str, str]) -> None:
    agent = agent_of(world, A)
    with pytest.raises(ApiException) as denied:
        agent.delete_namespaced_pod(pods[A], ns)
    assert denied.value.status == 403
    with pytest.raises(ApiException) as denied:
        agent.create_namespaced_pod(ns, new_pod("planted", container("main"), node=A))
    assert denied.value.status == 403


def test_the_extender_changes_only_a_pods_assignment(
    world: World, ns: str, pods: dict[str, str]
) -> None:
    extender = as_user(world.cp.service_account_kubeconfig("kube-system", SCHEDULER))
    extender.patch_namespaced_pod(pods[A], ns, annotate('{"version":1}', ASSIGNMENT_ANNOTATION))
    attacks: dict[str, Callable[[], object]] = {
        "swap a pod's image": lambda: extender.patch_namespaced_pod(
            pods[A], ns, {"spec": {"containers": [{"name": "main", "image": "evil:1"}]}}
        ),
        "relabel a pod": lambda: extender.patch_namespaced_pod(
            pods[A], ns, {"metadata": {"labels": {"app": "other"}}}
        ),
        "set a pod's allocated": lambda: extender.patch_namespaced_pod(
            pods[A], ns, annotate("{}", ALLOCATED_ANNOTATION)
        ),
    }
    for what, attack in attacks.items():
        body = refused(attack)
        assert "gpulet" in body, (what, body)
    pod = world.pod(ns, pods[A])
    assert pod["spec"]["containers"][0]["image"] != "evil:1"
    assert "app" not in (pod["metadata"].get("labels") or {})


# ---- the agent's metrics port, with a real TokenReview and SubjectAccessReview -------------


def metrics_port(world: World, node: str) -> int:
    found = re.search(r"metrics on :(\d+)", world.nodes[node].agent.log.read_text())
    assert found, "the agent printed no metrics port"
    return int(found.group(1))


def token_of(kubeconfig: Path) -> str:
    (user,) = yaml.safe_load(kubeconfig.read_text())["users"]
    return str(user["user"]["token"])


def get(port: int, path: str, token: str | None = None) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


def test_the_agents_allocations_and_metrics_answer_only_who_may_read_them(
    world: World, ns: str
) -> None:
    port = metrics_port(world, A)
    # Anyone on the pod network: the probe, nothing else.
    assert get(port, "/healthz") == 200
    assert get(port, "/allocations") == get(port, "/metrics") == 401
    assert get(port, "/allocations", "forged.token.value") == 401
    # A tenant's own service account: authenticated, not authorized.
    tenant = token_of(world.cp.service_account_kubeconfig(ns, "default"))
    assert get(port, "/allocations", tenant) == 403
    # A monitoring account granted the paths, as Prometheus would be.
    world.cp.apply(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": f"{ns}-scrape"},
            "rules": [{"nonResourceURLs": ["/metrics", "/allocations"], "verbs": ["get"]}],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": f"{ns}-scrape"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": f"{ns}-scrape",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "scraper", "namespace": ns}],
        },
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": "scraper", "namespace": ns},
        },
    )
    scraper = token_of(world.cp.service_account_kubeconfig(ns, "scraper"))
    assert get(port, "/metrics", scraper) == 200
    assert get(port, "/allocations", scraper) == 200


# ---- what an agent says about its node: its NodeTopology and its heartbeat Lease -----------

#: Two nodes of these tests' own: Node objects (no kubelet), each with an agent pod's token.
#: (gpu-a's and gpu-b's objects are their running agents' to write.)
C, D = "gpu-c", "gpu-d"
NAMESPACE = nt.DEFAULT_NAMESPACE
MACHINE = "pcie-4gpu"


@dataclass
class Reporter:
    """A user's NodeTopology and Lease clients (its token's), and the uid of the Node it
    reports on: an agent's own node's, or the one it would write about."""

    uid: str
    objects: Any  # CustomObjectsApi
    leases: Any  # CoordinationV1Api


def clients(api: Any) -> tuple[Any, Any]:
    """The NodeTopology (CustomObjectsApi) and Lease (CoordinationV1Api) clients of an
    ApiClient (Any: the tests send and read the API's JSON)."""
    return client.CustomObjectsApi(api), client.CoordinationV1Api(api)


def clients_of(kubeconfig: Path) -> tuple[Any, Any]:
    """clients() with a user's credentials."""
    return clients(config.new_client_from_config(config_file=str(kubeconfig)))  # type: ignore[no-untyped-call]


def reporter_of(kubeconfig: Path, uid: str) -> Reporter:
    return Reporter(uid, *clients_of(kubeconfig))


def gone(call: Callable[..., object], *args: Any, **kwargs: Any) -> None:
    """`call(*args, **kwargs)`, a delete: done, or nothing there to delete."""
    try:
        call(*args, **kwargs)
    except ApiException as e:
        if e.status != 404:
            raise


@pytest.fixture
def reporters(world: World) -> Iterator[dict[str, Reporter]]:
    """Nodes C and D, each with its agent's credentials (a token bound to a pod on it, as
    kubelet gives the DaemonSet's pod); their objects are gone afterwards."""
    core = world.core
    admin, leases = clients(world.cp.api())
    made: dict[str, Reporter] = {}
    try:
        for node in (C, D):
            created = core.create_node(
                {"apiVersion": "v1", "kind": "Node", "metadata": {"name": node}}
            )
            credentials = agent_kubeconfig(world.cp, core, node)
            made[node] = reporter_of(credentials, created.metadata.uid)
        yield made
    finally:
        for node in (C, D, "gpu-e"):
            gone(leases.delete_namespaced_lease, nt.lease_name(node), NAMESPACE)
            gone(admin.delete_cluster_custom_object, nt.GROUP, nt.VERSION, nt.PLURAL, node)
            pod = f"gpulet-agent-{node}"
            gone(core.delete_namespaced_pod, pod, NAMESPACE, grace_period_seconds=0)
            gone(core.delete_node, node)


def topology_of(node: str, uid: str) -> dict[str, Any]:
    """The NodeTopology the agent of `node` writes (its Node's uid `uid`)."""
    return node_topology_object(node, shipped(MACHINE), uid=uid)


def heartbeat_of(node: str, holder_node: str | None = None) -> dict[str, Any]:
    """The Lease the agent of `node` writes now, held by the agent of `holder_node`."""
    lease = lease_object(node, renewed=time.time(), namespace=NAMESPACE)
    holder = holder_node or node
    lease["spec"]["holderIdentity"] = nt.holder_identity(holder, f"gpulet-agent-{holder}")
    return lease


def as_read(body: dict[str, Any], current: Any) -> dict[str, Any]:
    """`body` as a replacement of the object `current` (its resourceVersion)."""
    version = (
        current["metadata"]["resourceVersion"]
        if isinstance(current, dict)
        else current.metadata.resource_version
    )
    body["metadata"]["resourceVersion"] = version
    return body


def create_topology(r: Reporter, body: dict[str, Any]) -> Any:
    return r.objects.create_cluster_custom_object(nt.GROUP, nt.VERSION, nt.PLURAL, body)


def replace_topology(r: Reporter, body: dict[str, Any]) -> Any:
    name = body["metadata"]["name"]
    return r.objects.replace_cluster_custom_object(nt.GROUP, nt.VERSION, nt.PLURAL, name, body)


def refused_by_policy(call: Callable[[], object]) -> str:
    body = refused(call)
    assert "gpulet-node-reports" in body, body
    return body


def refused_by_rbac(call: Callable[[], object]) -> None:
    with pytest.raises(ApiException) as denied:
        call()
    assert denied.value.status == 403, denied.value
    assert "cannot" in str(denied.value.body), denied.value.body  # RBAC's "... cannot create"


def test_an_agent_writes_its_own_nodes_topology_and_heartbeat_and_no_others(
    world: World, reporters: dict[str, Reporter]
) -> None:
    c, d = reporters[C], reporters[D]
    # What it is for: its own, created and replaced.
    mine = create_topology(c, topology_of(C, c.uid))
    changed = topology_of(C, c.uid)
    changed["spec"]["driver"] = "999.99"
    mine = replace_topology(c, as_read(changed, mine))
    assert mine["spec"]["driver"] == "999.99"
    lease = c.leases.create_namespaced_lease(NAMESPACE, heartbeat_of(C))
    lease = c.leases.replace_namespaced_lease(
        nt.lease_name(C), NAMESPACE, as_read(heartbeat_of(C), lease)
    )
    # What D's agent, stolen, would try against C, and with its own objects.
    attacks: dict[str, Callable[[], object]] = {
        "replace C's NodeTopology": lambda: replace_topology(
            d, as_read(topology_of(C, c.uid), mine)
        ),
        "create C's NodeTopology": lambda: create_topology(d, topology_of(C, c.uid)),
        "create a NodeTopology for a node yet to come": lambda: create_topology(
            d, topology_of("gpu-e", c.uid)
        ),
        "its own NodeTopology, owned by Node C": lambda: create_topology(
            d,
            {**topology_of(D, d.uid), "metadata": topology_of(C, c.uid)["metadata"] | {"name": D}},
        ),
        "its own NodeTopology, saying it is C": lambda: create_topology(
            d, {**topology_of(D, d.uid), "spec": topology_of(C, c.uid)["spec"]}
        ),
        "renew C's Lease": lambda: d.leases.replace_namespaced_lease(
            nt.lease_name(C), NAMESPACE, as_read(heartbeat_of(C, D), lease)
        ),
        "its own Lease, held as C's agent": lambda: d.leases.create_namespaced_lease(
            NAMESPACE, heartbeat_of(D, holder_node=C)
        ),
        "its own Lease, unlabelled (a heartbeat the extender never hears)": lambda: (
            d.leases.create_namespaced_lease(
                NAMESPACE, {**heartbeat_of(D), "metadata": {"name": nt.lease_name(D)}}
            )
        ),
    }
    for what, attack in attacks.items():
        body = refused_by_policy(attack)
        assert f"the gpulet agent of node {D} may not write" in body, (what, body)
    # No delete at all (RBAC): a Node's NodeTopology goes with the Node.
    refused_by_rbac(
        lambda: d.objects.delete_cluster_custom_object(nt.GROUP, nt.VERSION, nt.PLURAL, C)
    )
    refused_by_rbac(lambda: d.leases.delete_namespaced_lease(nt.lease_name(C), NAMESPACE))
    # C's are as C's agent wrote them.
    admin, admin_leases = clients(world.cp.api())
    now = admin.get_cluster_custom_object(nt.GROUP, nt.VERSION, nt.PLURAL, C)
    assert nt.owner_uid(now) == c.uid and now["spec"]["driver"] == "999.99"
    held = admin_leases.read_namespaced_lease(nt.lease_name(C), NAMESPACE)
    assert held.spec.holder_identity.startswith(f"{C}/")
    assert not admin.list_cluster_custom_object(
        nt.GROUP, nt.VERSION, nt.PLURAL, field_selector=f"metadata.name={D}"
    )["items"]


def test_an_agent_token_that_names_no_node_writes_no_report(
    world: World, reporters: dict[str, Reporter]
) -> None:
    c = reporters[C]
    unbound = reporter_of(world.cp.service_account_kubeconfig(NAMESPACE, "gpulet-agent"), c.uid)
    body = refused_by_policy(lambda: create_topology(unbound, topology_of(C, c.uid)))
    assert "credentials name no node" in body
    body = refused_by_policy(
        lambda: unbound.leases.create_namespaced_lease(NAMESPACE, heartbeat_of(C))
    )
    assert "credentials name no node" in body


def watches(call: Callable[..., Any]) -> bool:
    """Whether a watch through `call` (a list call) is allowed: it opens, and is closed."""
    response = call(watch=True, timeout_seconds=1, _preload_content=False)
    try:
        return bool(response.status == 200)
    finally:
        response.release_conn()


def test_the_extender_reads_the_reports_and_writes_none(
    world: World, ns: str, reporters: dict[str, Reporter]
) -> None:
    c = reporters[C]
    create_topology(c, topology_of(C, c.uid))
    lease = c.leases.create_namespaced_lease(NAMESPACE, heartbeat_of(C))
    objects, leases = clients_of(world.cp.service_account_kubeconfig(NAMESPACE, SCHEDULER))
    # What it is for: list and watch every NodeTopology and the namespace's heartbeats.
    listed = objects.list_cluster_custom_object(nt.GROUP, nt.VERSION, nt.PLURAL)
    assert C in {o["metadata"]["name"] for o in listed["items"]}
    assert watches(
        lambda **kw: objects.list_cluster_custom_object(nt.GROUP, nt.VERSION, nt.PLURAL, **kw)
    )
    heartbeats = leases.list_namespaced_lease(NAMESPACE, label_selector=nt.LEASE_SELECTOR)
    assert nt.lease_name(C) in {lease.metadata.name for lease in heartbeats.items}
    assert watches(
        lambda **kw: leases.list_namespaced_lease(NAMESPACE, label_selector=nt.LEASE_SELECTOR, **kw)
    )
    # Another namespace's Leases are not its to read.
    refused_by_rbac(lambda: leases.list_namespaced_lease(ns))
    # Writes: RBAC grants none on NodeTopologies, nor updates of the agents' Leases...
    refused_by_rbac(
        lambda: objects.create_cluster_custom_object(
            nt.GROUP, nt.VERSION, nt.PLURAL, topology_of("gpu-e", c.uid)
        )
    )
    refused_by_rbac(
        lambda: objects.patch_cluster_custom_object(
            nt.GROUP, nt.VERSION, nt.PLURAL, C, {"spec": {"driver": "1.0"}}
        )
    )
    refused_by_rbac(
        lambda: leases.replace_namespaced_lease(
            nt.lease_name(C), NAMESPACE, as_read(heartbeat_of(C), lease)
        )
    )
    # ...and the Leases its account may create (kube-scheduler's role, for its leader
    # election) are not heartbeats: the policy refuses a forged one.
    body = refused_by_policy(
        lambda: leases.create_namespaced_lease(NAMESPACE, heartbeat_of("gpu-e"))
    )
    assert f"system:serviceaccount:{NAMESPACE}:{SCHEDULER} may not write Lease" in body


def test_a_tenant_writes_no_report(world: World, ns: str, reporters: dict[str, Reporter]) -> None:
    c = reporters[C]
    tenant = reporter_of(world.cp.service_account_kubeconfig(ns, "default"), c.uid)
    objects, leases = tenant.objects, tenant.leases
    refused_by_rbac(lambda: create_topology(tenant, topology_of(C, c.uid)))
    refused_by_rbac(lambda: leases.create_namespaced_lease(NAMESPACE, heartbeat_of(C)))
    refused_by_rbac(lambda: objects.list_cluster_custom_object(nt.GROUP, nt.VERSION, nt.PLURAL))
