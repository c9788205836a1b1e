"""A node whose agent stops reporting takes no new pods: the extender judges each node's
`gpulet.io/heartbeat` by when it last saw it change."""

from __future__ import annotations

import pytest

from gpulet.api.stamps import stamp
from gpulet.standins.objects import container, node_object, pod_object
from scorer.cluster import ClusterView
from scorer.extender import Extender
from scorer.wire import ExtenderArgs, ExtenderBindingArgs, ExtenderFilterResult, HostPriority
from tests.nodes import shipped

H100 = shipped("dgx-h100")
#: 2026-12-05T12:00:00Z as epoch seconds: what the fake wall clock reads at the start.
NOON = 1_796_472_000.0


class Clocks:
    def __init__(self) -> None:
        self.mono = 1000.0
        self.wall = NOON

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall += seconds


@pytest.fixture
def clocks() -> Clocks:
    return Clocks()


def view(clocks: Clocks, stale_after: float = 180) -> ClusterView:
    return ClusterView(
        clock=lambda: clocks.mono, wall_clock=lambda: clocks.wall, stale_after=stale_after
    )


def filter_names(extender: Extender, *names: str) -> ExtenderFilterResult:
    pod = pod_object("p", container(gpus=1, core=30, memory=8000), uid="u-p")
    return extender.filter(ExtenderArgs(pod, node_names=names))


def test_the_stamp_matches_the_fake_wall_clock() -> None:
    assert stamp(NOON) == "2026-12-05T12:00:00Z"


def test_a_node_goes_quiet_when_its_heartbeat_stops_and_comes_back_when_it_resumes(
    clocks: Clocks,
) -> None:
    v = view(clocks)
    v.set_node_object(node_object("a", H100, heartbeat=stamp(clocks.wall)))
    extender = Extender(v)
    assert filter_names(extender, "a").node_names == ("a",)

    clocks.advance(170)
    assert filter_names(extender, "a").node_names == ("a",)
    assert v.quiet_nodes() == []

    clocks.advance(20)  # 190 s without a new heartbeat
    answer = filter_names(extender, "a")
    assert answer.node_names == ()
    reason = answer.failed_and_unresolvable_nodes["a"]
    assert "has not reported for 190 s" in reason
    assert "2026-12-05T12:00:00Z" in reason
    assert v.quiet_nodes() == ["a"]
    pod = pod_object("p", container(gpus=1, core=30, memory=8000))
    scores = extender.prioritize(ExtenderArgs(pod, node_names=("a",)))
    assert tuple(scores) == (HostPriority("a", 0),)

    # The agent is back: a new heartbeat; the topology (and so the node's generation and the
    # decisions kept for it) did not change, and the refusal was not kept.
    v.set_node_object(node_object("a", H100, heartbeat=stamp(clocks.wall)))
    assert filter_names(extender, "a").node_names == ("a",)
    assert v.quiet_nodes() == []


def test_liveness_is_the_change_not_the_writers_clock(clocks: Clocks) -> None:
    """A node whose clock runs an hour slow is alive as long as its heartbeat keeps changing."""
    v = view(clocks)
    slow = -3600.0
    v.set_node_object(node_object("a", H100, heartbeat=stamp(clocks.wall + slow)))
    assert v.quiet_nodes() == ["a"]  # first sight: aged by its stamp
    for _ in range(5):
        clocks.advance(60)
        v.set_node_object(node_object("a", H100, heartbeat=stamp(clocks.wall + slow)))
        assert v.quiet_nodes() == []


def test_a_node_first_seen_with_an_old_heartbeat_is_quiet_at_once(clocks: Clocks) -> None:
    """After a restart, the extender does not wait 180 s to notice a node that died before."""
    v = view(clocks)
    v.set_node_object(node_object("dead", H100, heartbeat=stamp(clocks.wall - 600)))
    v.set_node_object(node_object("ahead", H100, heartbeat=stamp(clocks.wall + 600)))
    v.set_node_object(node_object("garbled", H100, heartbeat="yesterday"))
    assert v.quiet_nodes() == ["dead"]
    info = v.node("dead")
    assert info is not None and info.placer is None
    assert info.problem is not None and "has not reported for 600 s" in info.problem
    clocks.advance(181)
    assert sorted(v.quiet_nodes()) == ["ahead", "dead", "garbled"]


def test_without_a_heartbeat_or_with_the_check_off_nodes_are_not_judged(clocks: Clocks) -> None:
    v = view(clocks)
    v.set_node_object(node_object("unstamped", H100))
    off = view(clocks, stale_after=0)
    off.set_node_object(node_object("a", H100, heartbeat=stamp(clocks.wall - 10_000)))
    clocks.advance(10_000)
    assert v.quiet_nodes() == [] and off.quiet_nodes() == []
    assert filter_names(Extender(v), "unstamped").node_names == ("unstamped",)
    assert filter_names(Extender(off), "a").node_names == ("a",)


def test_bind_refuses_a_node_that_went_quiet_after_filter(clocks: Clocks) -> None:
    v = view(clocks)
    v.set_node_object(node_object("a", H100, heartbeat=stamp(clocks.wall)))
    extender = Extender(v)
    assert filter_names(extender, "a").node_names == ("a",)
    clocks.advance(181)
    answer = extender.bind(ExtenderBindingArgs("p", "default", "u-p", "a"))
    assert "has not reported for 181 s" in answer.error
    assert list(v.pods()) == []


def test_a_heartbeat_alone_does_not_touch_the_nodes_generation(clocks: Clocks) -> None:
    v = view(clocks)
    v.set_node_object(node_object("a", H100, heartbeat=stamp(clocks.wall)))
    [(_, before)] = v.nodes(["a"])
    clocks.advance(60)
    v.set_node_object(node_object("a", H100, heartbeat=stamp(clocks.wall)))
    [(_, after)] = v.nodes(["a"])
    assert before == after >= 0
