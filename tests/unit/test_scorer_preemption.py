"""The extender's correction of kube-scheduler's victims (scorer.preemption): whatever the
node, the slices on it, their priorities and kube-scheduler's proposal, the victims it reports
free a placement for the pod on concrete GPUs and NICs; they are the proposal plus the fewest
lower-priority pods, the lowest priorities first; and a node is dropped only when even every
lower-priority pod gone would not make room."""

from __future__ import annotations

import itertools
from dataclasses import replace
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpulet.api.assignment import dump_assignment, parse_assignment
from gpulet.placement import Capacity, Placer
from gpulet.placement.podspec import pod_ask
from gpulet.standins.objects import container, pod_object
from scorer.cluster import Holder, NodeInfo, tally
from scorer.decide import Decision, decide
from scorer.preemption import victims_for
from tests.nodes import shipped
from tests.strategies import examples

CAPACITY = Capacity(gpu_slots=4, nic_slots=2)
NODES = [shipped("pcie-4gpu"), shipped("h100-vm")]

shapes = st.one_of(
    st.builds(lambda g: container(gpus=g), st.integers(1, 4)),
    st.builds(
        lambda g, c, m: container(gpus=g, core=c, memory=m),
        st.integers(1, 2),
        st.sampled_from([10, 30, 50, 70]),
        st.sampled_from([2048, 16384, 40000]),
    ),
    st.builds(lambda g, r: container(gpus=g, rdma=r), st.integers(1, 2), st.integers(1, 2)),
)


def info_of(topo: Any) -> NodeInfo:
    node = replace(topo, node="n")
    return NodeInfo("n", node, Placer(node, CAPACITY), CAPACITY)


def fits(info: NodeInfo, holders: list[Holder], ask: Any, gone: set[str]) -> bool:
    state = tally(info, (h.assignment for h in holders if h.uid not in gone))
    return isinstance(decide(info, state, ask), Decision)


@st.composite
def scenes(draw: st.DrawFn) -> tuple[NodeInfo, list[Holder], Any, int, set[str]]:
    """A node with pods placed on it one by one (so the state is one the extender could have
    made), their priorities and ages, a pending pod and kube-scheduler's proposal."""
    info = info_of(draw(st.sampled_from(NODES)))
    holders: list[Holder] = []
    for n in range(draw(st.integers(1, 7))):
        ask = pod_ask(pod_object(f"h{n}", draw(shapes), uid=f"uid-{n}"))
        state = tally(info, (h.assignment for h in holders))
        placed = decide(info, state, ask)
        if isinstance(placed, Decision):
            # The assignment round-trips through its annotation, as the view reads it.
            assignment = parse_assignment(dump_assignment(placed.assignment))
            holders.append(
                Holder(
                    f"uid-{n}",
                    assignment,
                    priority=draw(st.integers(0, 3)),
                    created=float(draw(st.integers(0, 100))),
                    assumed=draw(st.integers(0, 5)) == 0,
                )
            )
    ask = pod_ask(pod_object("pending", draw(shapes), uid="pending"))
    priority = draw(st.integers(1, 4))
    lower = sorted(h.uid for h in holders if h.priority < priority and not h.assumed)
    proposed = set(draw(st.lists(st.sampled_from(lower), unique=True))) if lower else set()
    return info, holders, ask, priority, proposed


@given(scenes())
@settings(max_examples=examples(150), deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_reported_victims_always_free_a_placement(
    scene: tuple[NodeInfo, list[Holder], Any, int, set[str]],
) -> None:
    info, holders, ask, priority, proposed = scene
    result = victims_for(info, holders, ask, priority, proposed)
    candidates = [
        h for h in holders if h.priority < priority and not h.assumed and h.uid not in proposed
    ]
    everyone = proposed | {h.uid for h in candidates}
    if result is None:
        assert not fits(info, holders, ask, everyone), "a node that could be freed was dropped"
        return
    gone = set(result)
    assert fits(info, holders, ask, gone), "the victims free no placement"
    assert proposed <= gone
    added = [h for h in holders if h.uid in gone - proposed]
    assert all(h in candidates for h in added), "a victim of equal or higher priority, or assumed"
    # A search cut short (its budget spent) settles for the greedy passes: still a placement,
    # still none of equal or higher priority, and drawing on a priority only when every
    # candidate below it gone would not free one (the fewest pods is no longer promised).
    hurried = victims_for(info, holders, ask, priority, proposed, budget=1)
    assert hurried is not None and fits(info, holders, ask, set(hurried))
    rushed = [h for h in candidates if h.uid in set(hurried)]
    assert all(h in candidates for h in holders if h.uid in set(hurried) - proposed)
    if rushed:
        top = max(h.priority for h in rushed)
        lower = {h.uid for h in candidates if h.priority < top}
        assert not fits(info, holders, ask, proposed | lower), "a lower priority would do"
    # The fewest at the lowest priorities: no set drawn from lower priorities frees a
    # placement, nor any smaller set drawn from the same ones.
    if added:
        level = max(h.priority for h in added)
        below = [h for h in candidates if h.priority < level]
        same = [h for h in candidates if h.priority <= level]
        for size in range(1, len(below) + 1):
            for extra in itertools.combinations(below, size):
                assert not fits(info, holders, ask, proposed | {h.uid for h in extra})
        for size in range(1, len(added)):
            for extra in itertools.combinations(same, size):
                assert not fits(info, holders, ask, proposed | {h.uid for h in extra})


def test_a_proposal_that_frees_too_little_is_completed_with_the_fewest() -> None:
    """kube-scheduler counts the node's aggregate core: evicting a 30% slice looks like room
    for a 70% one on a node with 60% free in total, but the GPU keeps 40% taken; the extender
    adds the 40% slice. With no proposal, the 40% slice alone is the fewest."""
    info = info_of(shipped("h100-vm"))  # one GPU
    holders: list[Holder] = []
    for n, core in enumerate((40, 30)):
        ask = pod_ask(pod_object(f"h{n}", container(gpus=1, core=core, memory=2048), uid=f"u{n}"))
        state = tally(info, (h.assignment for h in holders))
        placed = decide(info, state, ask)
        assert isinstance(placed, Decision)
        holders.append(Holder(f"u{n}", placed.assignment, priority=0, created=float(n)))
    ask = pod_ask(pod_object("p", container(gpus=1, core=70, memory=2048), uid="p"))
    assert victims_for(info, holders, ask, 1, {"u1"}) == ["u0", "u1"]
    assert victims_for(info, holders, ask, 1, set()) == ["u0"]
    assert victims_for(info, holders, ask, 0, set()) is None  # nobody of lower priority


def test_a_search_cut_short_takes_the_lowest_priorities_first() -> None:
    info = info_of(shipped("h100-vm"))
    holders: list[Holder] = []
    for n, priority in enumerate((2, 0, 0)):
        ask = pod_ask(pod_object(f"h{n}", container(gpus=1, core=30, memory=2048), uid=f"u{n}"))
        placed = decide(info, tally(info, (h.assignment for h in holders)), ask)
        assert isinstance(placed, Decision)
        holders.append(Holder(f"u{n}", placed.assignment, priority, created=float(n)))
    ask = pod_ask(pod_object("p", container(gpus=1, core=50, memory=2048), uid="p"))
    assert victims_for(info, holders, ask, 3, set(), budget=0) == ["u1", "u2"]
    assert victims_for(info, holders, ask, 3, set()) == ["u1", "u2"]


def test_a_search_cut_short_frees_one_gpu_rather_than_a_little_of_each() -> None:
    """Four GPUs, each full of 25% slices (four slots each; priorities 0 and 1, all lower): a
    slice of 60% needs three pods gone from one GPU. Past the budget, the plain preference
    order would take pods from GPU after GPU before one has room; the pass focused on one GPU
    takes three."""
    info = info_of(shipped("pcie-4gpu"))
    holders: list[Holder] = []
    for n in range(16):
        spec = container(gpus=1, core=25, memory=1024)
        ask = pod_ask(pod_object(f"h{n}", spec, uid=f"u{n:02d}"))
        placed = decide(info, tally(info, (h.assignment for h in holders)), ask)
        assert isinstance(placed, Decision)
        holders.append(Holder(f"u{n:02d}", placed.assignment, n % 2, created=float(n)))
    pending = pod_ask(pod_object("p", container(gpus=1, core=60, memory=1024), uid="p"))
    assert not fits(info, holders, pending, set())
    for budget in (0, 5):
        found = victims_for(info, holders, pending, 5, set(), budget=budget)
        assert found is not None and fits(info, holders, pending, set(found))
        assert len(found) == 3, found
        gpus = {s.uuid for h in holders if h.uid in found for c in h.assignment.containers
                for s in c.gpus}  # fmt: skip
        assert len(gpus) == 1, "the three victims share one GPU"
