"""What gpulet's own accounts may do, asked of a real kube-apiserver with deploy/'s RBAC and
admission policies: a node's agent, with the token kubelet gives its pod (which names the
node), changes its own Node and the pods bound to it, and of them only gpulet's annotations;
the extender changes a pod's assignment annotation and nothing else. Each attack is what a
stolen token would try."""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from gpulet.api.resources import (
    ALLOCATED_ANNOTATION,
    ASSIGNMENT_ANNOTATION,
    HEARTBEAT_ANNOTATION,
    TOPOLOGY_ANNOTATION,
)
from gpulet.standins.objects import container
from tests.e2e.conftest import SCHEDULER, World
from tests.e2e.test_real_kubernetes import create, new_pod

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


def annotate(value: str, key: str) -> dict[str, Any]:
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
