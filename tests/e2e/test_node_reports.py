"""What the agents keep in a real API server (issue 15): each node's NodeTopology, owned by
its Node, and a heartbeat Lease renewed every heartbeat, with nothing of gpulet's left on the
Node; the garbage collector of kube-controller-manager deleting a NodeTopology with its Node;
and the extender filtering out a node whose agent stopped renewing its Lease."""

from __future__ import annotations

import functools
import json
import subprocess
import urllib.request
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from gpulet.api import nodetopology as nt
from gpulet.api.resources import (
    BATCH_CORE_RESOURCE,
    BATCH_MEMORY_RESOURCE,
    GPU_RESOURCE,
    node_aggregates,
)
from gpulet.api.share import Idle
from gpulet.api.stamps import epoch
from gpulet.kube.calls import leases, node_topologies
from gpulet.placement.podspec import whole_quantity
from gpulet.standins.objects import container
from scorer.wire import ExtenderArgs, ExtenderFilterResult
from tests.e2e.conftest import NODES, World
from tests.e2e.test_real_kubernetes import new_pod
from tests.kube.cluster import wait_until

pytestmark = pytest.mark.e2e


def _lease(world: World, node: str) -> dict[str, Any]:
    raw = leases(world.core.api_client, nt.DEFAULT_NAMESPACE).read(nt.lease_name(node))
    return dict(json.loads(raw.data))


def _topology(world: World, node: str) -> dict[str, Any] | None:
    try:
        return dict(json.loads(node_topologies(world.core.api_client).read(node).data))
    except ApiException as e:
        if e.status == 404:
            return None
        raise


@pytest.mark.parametrize("node", sorted(NODES))
def test_each_agent_reports_in_its_nodetopology_and_lease_not_on_its_node(
    world: World, node: str
) -> None:
    # Once it has published the room for batch (its status: a steady node's once), the
    # NodeTopology changes no more while the node does not.
    topology = wait_until(
        lambda: (t := _topology(world, node)) and "status" in t and t,
        60,
        watch=world.cp.processes,
        why=f"{node}'s batch room published",
    )
    owner = world.core.read_node(node).metadata
    assert nt.owner_uid(topology) == owner.uid
    assert topology["spec"]["node"] == node
    assert not [k for k in owner.annotations or {} if k.startswith("gpulet.io/")]
    first = _lease(world, node)
    assert first["metadata"]["labels"] == nt.LEASE_LABELS
    assert first["spec"]["holderIdentity"] == f"{node}/gpulet-agent-{node}"
    renewed = epoch(first["spec"]["renewTime"])
    duration = first["spec"]["leaseDurationSeconds"]

    def renewal() -> dict[str, Any] | None:
        lease = _lease(world, node)
        return lease if epoch(lease["spec"]["renewTime"]) != renewed else None

    later = wait_until(
        renewal,
        duration,
        watch=world.cp.processes,
        why=f"the Lease of {node} renewed",
    )
    assert later["spec"]["acquireTime"] == first["spec"]["acquireTime"]
    # Renewing the Lease wrote nothing else: the NodeTopology is as it was.
    assert _topology(world, node) == topology


def test_a_nodetopology_goes_with_its_node(world: World) -> None:
    """kube-controller-manager's garbage collector deletes a NodeTopology whose Node is
    deleted (it is its owner); gpulet deletes nothing itself."""
    node = world.core.create_node({"metadata": {"name": "gone-1"}})
    doc = _topology(world, sorted(NODES)[0])
    assert doc is not None
    body = nt.node_topology("gone-1", node.metadata.uid, {**doc["spec"], "node": "gone-1"})
    node_topologies(world.core.api_client).create(body)
    world.core.delete_node("gone-1")
    wait_until(
        lambda: _topology(world, "gone-1") is None,
        60,
        watch=world.cp.processes,
        why="the garbage collector deleted NodeTopology gone-1",
    )


def _filter(world: World, node: str) -> ExtenderFilterResult:
    pod = new_pod("probe", container("main", gpus=1, core=10, memory=1024))
    pod["metadata"].update(namespace="default", uid="probe-uid")
    request = urllib.request.Request(
        f"{world.recorder.upstream}/gpulet/filter",
        data=json.dumps(ExtenderArgs(pod, node_names=(node,)).dump()).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as r:
        return ExtenderFilterResult.parse(json.loads(r.read()))


def test_a_node_whose_agent_stops_renewing_is_filtered_with_its_reason(world: World) -> None:
    node = "gpu-b"
    assert _filter(world, node).names() == (node,)
    duration = _lease(world, node)["spec"]["leaseDurationSeconds"]
    reasons: list[str] = []

    def quiet() -> bool:
        result = _filter(world, node)
        reason = {**result.failed_nodes, **result.failed_and_unresolvable_nodes}.get(node)
        if reason is not None:
            reasons.append(reason)
        return reason is not None

    # Filtered within the Lease's duration of its last renewal, and the watch's delay.
    world.restart_agent(
        node,
        while_down=lambda: wait_until(
            quiet, duration + 10, watch=world.cp.processes, why=f"{node} judged quiet"
        ),
    )
    assert "heartbeat Lease" in reasons[-1] and nt.lease_name(node) in reasons[-1], reasons
    wait_until(
        lambda: _filter(world, node).names() == (node,),
        duration,
        watch=world.cp.processes,
        why=f"{node} back once its agent renews",
    )


def _measured(world: World, node: str) -> dict[int, Idle]:
    return nt.idle_of(_topology(world, node) or {})


def _says(world: World, node: str, want: dict[str, int]) -> bool:
    allocatable = world.core.read_node(node).status.allocatable or {}
    return all(whole_quantity(allocatable.get(r)) == v for r, v in want.items())


def test_kubectl_describe_node_shows_the_aggregates(world: World) -> None:
    """What an operator sees: kubectl's own describer (kubebox describe) lists the agent's
    aggregates under the Node's Capacity and Allocatable, beside kubelet's gpulet.io/gpu, and
    the batch room it measured (the same, less what its NodeTopology's status says)."""
    for node in NODES:
        topo = world.topology(node)
        want: dict[str, int] = node_aggregates(g.memory_mib for g in topo.gpus)
        measured = wait_until(
            functools.partial(_measured, world, node),
            60,
            watch=world.cp.processes,
            why=f"{node}'s batch room in its NodeTopology's status",
        )
        want[BATCH_CORE_RESOURCE] = sum(i.core for i in measured.values())
        want[BATCH_MEMORY_RESOURCE] = sum(i.memory_mib for i in measured.values())
        wait_until(
            functools.partial(_says, world, node, dict(want)),
            30,
            watch=world.cp.processes,
            why=f"{node}'s batch aggregates as its status says",
        )
        admin = world.cp.admin_kubeconfig
        assert admin is not None
        text = subprocess.run(
            [str(world.cp.binary), "describe", "--kubeconfig", str(admin), "Node", node],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
        for title in ("Capacity", "Allocatable"):
            lines = text.splitlines()
            start = lines.index(f"{title}:") + 1
            section: dict[str, str] = {}
            for line in lines[start:]:
                if not line.startswith(" "):
                    break  # the next section's title
                name, _, shown = line.strip().partition(":")
                section[name] = shown.strip()
            for resource, amount in want.items():
                assert whole_quantity(section.get(resource)) == amount, (title, resource, text)
            assert GPU_RESOURCE in section, text
