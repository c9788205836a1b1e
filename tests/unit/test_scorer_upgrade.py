"""Upgrading a running cluster from Node annotations to NodeTopology objects and Leases
(docs/upgrade.md): every node keeps taking pods through the mixed states, in either order,
and a node whose agent dies is still caught, whichever form it reports in.

Agents are simulated by the objects they write, at the times they write them; extenders are
`ClusterView`s fed as their watches would feed them. The previous release's extender watched
Nodes only: a view fed nothing but `set_node_object` is exactly that extender."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from gpulet.api import nodetopology as nt
from gpulet.api.resources import HEARTBEAT_ANNOTATION, TOPOLOGY_ANNOTATION
from gpulet.api.stamps import stamp
from gpulet.standins.objects import lease_object, node_object, node_topology_object
from gpulet.topology import Topology
from scorer.cluster import ClusterView
from scorer.extender import Extender
from tests.nodes import shipped
from tests.unit.test_scorer_heartbeat import Clocks, filter_names, view
from tests.unit.test_scorer_sources import problem

H100 = shipped("dgx-h100")
A100 = shipped("dgx-a100")
#: The previous release's heartbeat interval.
OLD_HEARTBEAT_S = 60


@dataclass
class Cluster:
    """The API's Nodes, NodeTopology objects and Leases, and the extenders watching them."""

    clocks: Clocks
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    topologies: dict[str, dict[str, Any]] = field(default_factory=dict)
    leases: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: (view, whether it is the previous release's: it watches Nodes only)
    watchers: list[tuple[ClusterView, bool]] = field(default_factory=list)

    def extender(self, *, previous_release: bool = False) -> ClusterView:
        """An extender starting now: it lists what is there, then watches."""
        v = view(self.clocks)
        self.watchers.append((v, previous_release))
        for obj in self.nodes.values():
            v.set_node_object(obj)
        if not previous_release:
            for obj in self.topologies.values():
                v.set_node_topology_object(obj)
            for obj in self.leases.values():
                v.set_lease_object(obj)
        return v

    def put_node(self, obj: dict[str, Any]) -> None:
        self.nodes[obj["metadata"]["name"]] = obj
        for v, _ in self.watchers:
            v.set_node_object(obj)

    def put_topology(self, obj: dict[str, Any]) -> None:
        self.topologies[obj["metadata"]["name"]] = obj
        for v, previous in self.watchers:
            if not previous:
                v.set_node_topology_object(obj)

    def put_lease(self, obj: dict[str, Any]) -> None:
        self.leases[obj["metadata"]["name"]] = obj
        for v, previous in self.watchers:
            if not previous:
                v.set_lease_object(obj)


@dataclass
class Agent:
    """One node's agent: of the previous release (annotations every 60 s) until `upgrade`,
    then of this one (NodeTopology once, its Lease every 20 s)."""

    cluster: Cluster
    name: str
    topo: Topology = H100
    upgraded: bool = False
    keep: bool = False  # --legacy-annotations keep
    alive: bool = True
    last: float = field(default=-1e9)

    def node(self, *, topology: bool, heartbeat: bool) -> dict[str, Any]:
        beat = stamp(self.cluster.clocks.wall) if heartbeat else None
        return node_object(self.name, self.topo, heartbeat=beat, legacy=topology)

    def report(self) -> None:
        """What the agent writes when its interval is up (at start: at once)."""
        now = self.cluster.clocks.mono
        if not self.alive or now - self.last < (nt.HEARTBEAT_S if self.upgraded else 60):
            return
        self.last = now
        if self.upgraded:
            self.cluster.put_lease(lease_object(self.name, renewed=self.cluster.clocks.wall))
        else:
            self.cluster.put_node(self.node(topology=True, heartbeat=True))

    def upgrade(self, *, keep: bool = False) -> None:
        """The new agent's start: its NodeTopology, its Lease, then the Node's annotations
        removed in one patch (with `keep`: the heartbeat's only). Each extender is checked
        between the writes."""
        self.upgraded, self.keep = True, keep
        self.cluster.put_topology(node_topology_object(self.name, self.topo))
        check_all_placed(self.cluster)
        self.cluster.put_lease(lease_object(self.name, renewed=self.cluster.clocks.wall))
        self.last = self.cluster.clocks.mono
        check_all_placed(self.cluster)
        self.cluster.put_node(self.node(topology=keep, heartbeat=False))

    def set_topology(self, topo: Topology) -> None:
        """The hardware changed: this release replaces its NodeTopology (and with `keep`,
        the annotation too)."""
        self.topo = topo
        if not self.upgraded:
            self.cluster.put_node(self.node(topology=True, heartbeat=True))
            return
        self.cluster.put_topology(node_topology_object(self.name, topo))
        if self.keep:
            self.cluster.put_node(self.node(topology=True, heartbeat=False))


def run_for(seconds: int, agents: list[Agent]) -> None:
    """Time passes by 10 s steps; each live agent reports when its interval is up, and
    every extender keeps placing on each of their nodes."""
    for _ in range(seconds // 10):
        agents[0].cluster.clocks.advance(10)
        for agent in agents:
            agent.report()
        check_all_placed(agents[0].cluster, [a.name for a in agents if a.alive])


def check_all_placed(cluster: Cluster, names: list[str] | None = None) -> None:
    names = list(cluster.nodes) if names is None else names
    for v, _ in cluster.watchers:
        answer = filter_names(Extender(v), *names)
        assert answer.node_names == tuple(names), answer.failed_and_unresolvable_nodes


def generations(v: ClusterView) -> list[int]:
    return [g for _, g in v.nodes(sorted(v.node_names()))]


@pytest.fixture
def cluster() -> Cluster:
    return Cluster(Clocks())


def test_one_extender_places_on_old_new_and_mid_upgrade_nodes(cluster: Cluster) -> None:
    old, new, mid = (Agent(cluster, n) for n in ("old-1", "new-1", "mid-1"))
    for agent in (old, new, mid):
        agent.report()
    v = cluster.extender()
    new.upgrade()
    # Mid-upgrade: the NodeTopology and Lease are written, the annotations not yet removed.
    mid.upgraded = True
    cluster.put_topology(node_topology_object("mid-1", H100))
    cluster.put_lease(lease_object("mid-1", renewed=cluster.clocks.wall))
    assert TOPOLOGY_ANNOTATION in cluster.nodes["mid-1"]["metadata"]["annotations"]
    agents = [old, new, mid]
    run_for(600, agents)
    before = generations(v)
    cluster.put_node(mid.node(topology=False, heartbeat=False))  # the annotations go
    assert generations(v) == before  # nothing changed for placement: decisions are kept
    run_for(300, agents)
    assert v.quiet_nodes() == []

    # Each kind of agent dies, and is caught by its own rule.
    old.alive = new.alive = False
    run_for(nt.LEASE_DURATION_S + 10, agents)
    assert v.quiet_nodes() == ["new-1"]
    run_for(180, agents)
    assert sorted(v.quiet_nodes()) == ["new-1", "old-1"]
    assert "heartbeat Lease kube-system/gpulet-node-new-1" in problem(v, "new-1")
    assert f"last {HEARTBEAT_ANNOTATION}" in problem(v, "old-1")


def test_order_a_the_extender_first_then_each_agent(cluster: Cluster) -> None:
    agents = [Agent(cluster, f"gpu-{i}", topo) for i, topo in enumerate((H100, A100, H100))]
    for agent in agents:
        agent.report()
    old_extender = cluster.extender(previous_release=True)
    run_for(300, agents)
    # The extender is replaced by this release's: it lists, then watches.
    cluster.watchers.remove((old_extender, True))
    v = cluster.extender()
    run_for(300, agents)  # old agents keep working through their annotations
    for agent in agents:
        agent.upgrade()
        run_for(120, agents)
    assert all(not n["metadata"].get("annotations") for n in cluster.nodes.values())
    before = generations(v)
    run_for(600, agents)
    assert generations(v) == before and v.quiet_nodes() == []
    agents[1].set_topology(H100)  # the hardware changed: read again
    assert generations(v) != before
    info = v.node("gpu-1")
    assert (
        info is not None
        and info.topo is not None
        and info.topo.gpus[0].model == (H100.gpus[0].model)
    )


def test_order_b_the_agents_first_keeping_the_topology_annotation(cluster: Cluster) -> None:
    agents = [Agent(cluster, f"gpu-{i}") for i in range(3)]
    for agent in agents:
        agent.report()
    previous = cluster.extender(previous_release=True)
    for agent in agents:
        agent.upgrade(keep=True)
        run_for(120, agents)
    for obj in cluster.nodes.values():
        assert set(obj["metadata"]["annotations"]) == {TOPOLOGY_ANNOTATION}
    # The previous extender does not see the Leases and judges no heartbeat: it keeps
    # placing (it cannot tell a dead agent now, which is why order B is short).
    run_for(600, agents)
    assert previous.quiet_nodes() == []
    agents[2].set_topology(A100)  # kept current on the annotation, for the old extender
    info = previous.node("gpu-2")
    assert info is not None and info.topo is not None
    assert info.topo.gpus[0].model == A100.gpus[0].model

    # The extender upgrades: the NodeTopology wins, the Lease is judged.
    cluster.watchers.remove((previous, True))
    v = cluster.extender()
    run_for(120, agents)
    agents[0].alive = False
    run_for(nt.LEASE_DURATION_S + 10, agents)
    assert v.quiet_nodes() == ["gpu-0"]
    agents[0].alive = True
    agents[0].report()
    assert v.quiet_nodes() == []

    # The agents roll again without `keep`: the topology annotation goes; nothing changes.
    before = generations(v)
    for agent in agents:
        agent.keep = False
        cluster.put_node(agent.node(topology=False, heartbeat=False))
        run_for(60, agents)
    assert generations(v) == before and v.quiet_nodes() == []


def test_a_node_whose_annotation_and_nodetopology_disagree_is_placed_as_the_nodetopology(
    cluster: Cluster,
) -> None:
    """Mid-upgrade with `keep`, the hardware changes between the two writes: the extender of
    this release places by the NodeTopology (the annotation is written second)."""
    agent = Agent(cluster, "gpu-0", A100)
    agent.report()
    agent.upgrade(keep=True)
    v = cluster.extender()
    cluster.put_topology(node_topology_object("gpu-0", H100))
    info = v.node("gpu-0")
    assert info is not None and info.topo is not None
    assert info.topo.gpus[0].model == H100.gpus[0].model
