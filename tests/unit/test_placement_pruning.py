"""The placement engine's pruning: each bound drops only states that cannot reach the answer,
and drops all of them.

The property tests compare the engine's answers with the exhaustive search, which catches a
bound that prunes too much (an optimum cut away) but not one that prunes too little (the same
answer, found with more work). These tests pin each bound itself: `_merge` against the same
merge with no bound, and `Placer._search` against bounds recomputed from the tree.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from unittest import mock

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gpulet.placement import (
    Capacity,
    NodeState,
    Placement,
    Placer,
    Request,
    TopologyPolicy,
    engine,
    exhaustive,
)
from gpulet.placement.eligibility import candidates
from gpulet.topology import Nic, NumaNode, PcieLocation, Topology
from tests.nodes import shipped, switch_gpus
from tests.strategies import examples, node_states, requests, topologies

CAP = Capacity(gpu_slots=4, nic_slots=2)
B = engine._B


def key(a: int, b: int) -> int:
    return a << B | b


def split(packed: int) -> tuple[int, int]:
    return packed >> B, packed & engine._NMASK


def context(gpus: int, nics: int) -> engine._Context:
    return engine._Context(gpus, nics, False, False, frozenset(), engine._Memo())


@st.composite
def merges(draw: st.DrawFn) -> tuple[int, int, list[tuple[int, engine.Table, int]]]:
    """A request (k GPUs, m NICs) and 2-4 children: each with its room (eligible devices,
    packed) and a table of some (a, b) within that room, with or without the empty state."""
    kids = []
    for uid in range(draw(st.integers(2, 4))):
        room_g, room_n = draw(st.integers(0, 3)), draw(st.integers(0, 3))
        cells = [key(a, b) for a in range(room_g + 1) for b in range(room_n + 1)]
        chosen = draw(st.sets(st.sampled_from(cells), min_size=1))
        table = {c: (0 if c == 0 else draw(st.integers(0, 40))) for c in chosen}
        kids.append((uid, table, key(room_g, room_n)))
    k, m = draw(st.integers(1, 6)), draw(st.integers(0, 6))
    return k, m, kids


def merge(
    kids: list[tuple[int, engine.Table, int]],
    k: int,
    m: int,
    need: tuple[int, int],
    target: int | None = None,
) -> engine.Table:
    node = engine._Node("numa", 0, uid=99, rank_cost=3, pair=5)
    return engine._merge(node, kids, context(k, m), need, target)


@settings(max_examples=examples(300), deadline=None)
@given(merges(), st.data())
@example((2, 1, [(0, {0: 0, key(1, 0): 7}, key(1, 1)), (1, {0: 0, key(1, 1): 2}, key(1, 1))]), None)
def test_merge_keeps_exactly_the_states_that_can_reach_the_need(
    case: tuple[int, int, list[tuple[int, engine.Table, int]]], data: st.DataObject | None
) -> None:
    """Unbounded, the merge holds every split within the request; with a need, exactly the
    unbounded states that reach it, at the same cost; with the request as target, just it."""
    k, m, kids = case
    full = merge(kids, k, m, (0, 0))
    for packed in full:
        a, b = split(packed)
        assert a <= k and b <= m, f"state {(a, b)} beyond the request {(k, m)}"
    needs = [(1, 0), (0, 1), (k, m)]
    if data is not None:
        needs.append((data.draw(st.integers(0, k)), data.draw(st.integers(0, m))))
    for need in needs:
        pruned = merge(kids, k, m, need)
        want = {p: c for p, c in full.items() if split(p)[0] >= need[0] and split(p)[1] >= need[1]}
        assert pruned == want, f"need {need}"
    target = key(k, m)
    got = merge(kids, k, m, (k, m), target)
    assert got == ({target: full[target]} if target in full else {})


def test_merge_of_one_child_is_that_childs_table() -> None:
    table = {0: 0, key(1, 0): 4, key(2, 1): 9}
    assert merge([(0, table, key(2, 1))], 2, 1, (2, 1)) is table


@dataclass(frozen=True)
class Call:
    node: engine._Node
    kids: list[tuple[int, engine.Table, int]]
    need: tuple[int, int]
    target: int | None


@contextmanager
def merges_seen() -> Iterator[list[Call]]:
    calls: list[Call] = []
    real = engine._merge

    def spy(
        node: engine._Node,
        kids: list[tuple[int, engine.Table, int]],
        ctx: engine._Context,
        need: tuple[int, int],
        target: int | None,
    ) -> engine.Table:
        calls.append(Call(node, kids, need, target))
        return real(node, kids, ctx, need, target)

    with mock.patch.object(engine, "_merge", spy):
        yield calls


def subtree(node: engine._Node) -> tuple[set[int], set[str]]:
    gpus: set[int] = set()
    nics: set[str] = set()
    for n in node.walk():
        gpus.update(n.gpus)
        nics.update(n.nics)
    return gpus, nics


def check_bounds(topo: Topology, req: Request, state: NodeState) -> None:
    """Every merge `_search` asks for gets: the need the rest of the node leaves (the request
    less the eligible devices outside the subtree), each child's room (its eligible devices),
    and the request as target at the top only (the machine, or a NUMA node for
    single-numa, where the machine is not merged at all)."""
    placer = Placer(topo, CAP)
    cand = candidates(topo, req, state, CAP)
    if not placer.hierarchical or len(cand.gpus) < req.gpus or len(cand.nics) < req.rdma:
        return
    if req.gpus == 1 and not req.rdma:
        return  # the one-GPU path merges nothing
    single = req.topology is TopologyPolicy.SINGLE_NUMA
    with merges_seen() as calls:
        placer.place(req, state)
    by_uid = {n.uid: n for n in placer.root.walk()}
    for call in calls:
        gpus, nics = subtree(call.node)
        outside_g = len(set(cand.gpus) - gpus)
        outside_n = len(set(cand.nics) - nics)
        assert call.need == (max(0, req.gpus - outside_g), max(0, req.rdma - outside_n))
        for uid, _, room in call.kids:
            kid_g, kid_n = subtree(by_uid[uid])
            assert room == key(len(kid_g & set(cand.gpus)), len(kid_n & set(cand.nics)))
        top = call.node.level == "machine" or (single and call.node.level == "numa")
        assert call.target == (key(req.gpus, req.rdma) if top else None), call.node.level
        assert not (single and call.node.level == "machine"), "single-numa merged the machine"


@settings(max_examples=examples(150), deadline=None, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_the_search_bounds_every_merge_by_what_the_rest_of_the_node_holds(
    data: st.DataObject,
) -> None:
    topo = data.draw(topologies())
    state = data.draw(node_states(topo, CAP))
    req = data.draw(requests(len(topo.gpus), len(topo.nics), min_gpus=2))
    check_bounds(topo, req, state)


@pytest.mark.parametrize("node", ["dgx-a100", "dgx-h100"])
@pytest.mark.parametrize(
    "req",
    [
        Request(2, rdma=2, topology=TopologyPolicy.RESTRICTED),
        Request(4, rdma=1, topology=TopologyPolicy.SINGLE_NUMA),
        Request(8, rdma=8),
        Request(3, rdma=0),
    ],
)
def test_the_search_bounds_on_the_shipped_nodes(node: str, req: Request) -> None:
    topo = shipped(node)
    check_bounds(topo, req, NodeState())
    with merges_seen() as calls:
        Placer(topo, CAP).place(req)
    assert calls, "the tree search ran"


def test_a_leaf_with_nvlink_pairs_weighs_every_pair_and_each_gpus_own_cost() -> None:
    """Four GPUs behind one switch, NVLinked in two pairs (0-1, 2-3): any three hold one
    NVLinked pair and two PCIe pairs, so they tie on links and the lowest indices win. Counting
    only one pair of the three would take 0, 2 and 3."""
    topo = Topology.build(
        "nvl4",
        switch_gpus([((1, 4),), ((0, 4),), ((3, 4),), ((2, 4),)]),
        [],
        [NumaNode(0, (0, 1), 1024)],
    )
    for gpus, want in ((3, (0, 1, 2)), (2, (0, 1))):
        got = Placer(topo).place(Request(gpus))
        assert isinstance(got, Placement), got
        assert tuple(g.index for g in got.gpus) == want
        cand = candidates(topo, Request(gpus), NodeState(), Capacity())
        best = exhaustive.search(topo, Request(gpus), NodeState(), cand)
        assert best is not None and got.cost == best[0]


def test_a_node_with_more_devices_than_a_table_key_holds_is_refused() -> None:
    """Table keys give 10 bits to each count: 1023 NICs is the most a node may have."""
    loc = PcieLocation("0000:01:00.0", "pci0000:00", ("0000:00:01.0",))
    numa = (NumaNode(0, (0,), 1024),)

    def nics(n: int) -> tuple[Nic, ...]:
        return tuple(
            Nic(f"mlx5_{i}", 1, loc, 0, f"ib{i}", "ACTIVE", "UP", 200.0, "InfiniBand")
            for i in range(n)
        )

    gpus = tuple(switch_gpus([()] * 1024))
    for many in (Topology("wide", (), nics(1024), numa), Topology("wide", gpus, (), numa)):
        with pytest.raises(ValueError, match="node wide: more than 1023 GPUs or NICs"):
            Placer(many)
    most = Placer(Topology("most", (), nics(1023), numa)).place(Request(0, rdma=1))
    assert isinstance(most, Placement) and most.nics == ("mlx5_0",)


def test_a_link_matrix_that_does_not_nest_sends_the_node_to_the_exhaustive_search() -> None:
    """The tree charges a GPU and a NIC behind one switch PIX; a node whose matrix says SYS
    (a matrix reported, not derived) is searched exhaustively, by the matrix."""
    gpus = switch_gpus([(), ()])
    loc = PcieLocation(
        "0000:09:00.0", "pci0000:00", ("0000:00:01.0", "0000:01:00.0", "0000:02:09.0")
    )
    nic = Nic("mlx5_0", 1, loc, 0, "ib0", "ACTIVE", "UP", 200.0, "InfiniBand")
    built = Topology.build("odd", gpus, [nic], [NumaNode(0, (0, 1), 1024)])
    assert Placer(built).hierarchical
    links = {a: dict(row) for a, row in built.links.items()}
    links["GPU0"]["mlx5_0"] = links["mlx5_0"]["GPU0"] = "SYS"
    odd = Topology("odd", built.gpus, built.nics, built.numa_nodes, None, links)
    placer = Placer(odd)
    assert not placer.hierarchical
    got = placer.place(Request(1, rdma=1))
    assert isinstance(got, Placement) and [g.index for g in got.gpus] == [1]
