"""Where the extender reads a node from: its NodeTopology when its Node owns one, else the
previous release's `gpulet.io/topology` annotation; and whether its agent is alive: its
heartbeat Lease, else (with a NodeTopology) the Lease it should have, else the annotation
heartbeat. A NodeTopology left from an earlier Node, or naming another node's, has no
effect; one that cannot be read gives the node a problem, never a crash."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import scorer.cluster
from gpulet.api import nodetopology as nt
from gpulet.api.stamps import stamp
from gpulet.standins.objects import lease_object, node_object, node_topology_object, node_uid
from gpulet.topology.document import from_document
from scorer.cluster import ClusterView
from scorer.extender import Extender
from tests.nodes import shipped
from tests.strategies import examples
from tests.unit.test_scorer_heartbeat import Clocks, filter_names, view

H100 = shipped("dgx-h100")  # 8 GPUs
PCIE = shipped("pcie-4gpu")  # 4 GPUs


@pytest.fixture
def clocks() -> Clocks:
    return Clocks()


def gpus(v: ClusterView, name: str) -> int | None:
    """How many GPUs the extender sees on `name` (None: it cannot place there)."""
    info = v.node(name)
    assert info is not None
    return None if info.topo is None else len(info.topo.gpus)


def problem(v: ClusterView, name: str) -> str:
    info = v.node(name)
    assert info is not None and info.problem is not None
    return info.problem


# ---- topology: which source -------------------------------------------------------------


def test_the_nodetopology_wins_over_the_annotation_and_the_annotation_is_the_fallback(
    clocks: Clocks,
) -> None:
    v = view(clocks)
    v.set_node_object(node_object("a", PCIE))
    assert gpus(v, "a") == 4
    v.set_node_topology_object(node_topology_object("a", H100))
    assert gpus(v, "a") == 8
    v.remove_node_topology("a")
    assert gpus(v, "a") == 4


def test_a_nodetopology_seen_before_its_node_counts_once_the_node_comes(clocks: Clocks) -> None:
    v = view(clocks)
    v.set_node_topology_object(node_topology_object("a", H100))
    assert v.node("a") is None and v.node_names() == []
    v.set_node_object(node_object("a", H100, legacy=False))
    assert gpus(v, "a") == 8


def test_a_node_with_neither_form_says_what_it_lacks(clocks: Clocks) -> None:
    v = view(clocks)
    v.set_node_object(node_object("a", H100, legacy=False))
    text = problem(v, "a")
    assert "NodeTopology (nodetopologies.gpulet.io)" in text
    assert "gpulet.io/topology annotation" in text
    assert filter_names(Extender(v), "a").failed_and_unresolvable_nodes["a"] == text


def test_an_orphan_nodetopology_is_ignored_and_logged_once(
    clocks: Clocks, caplog: pytest.LogCaptureFixture
) -> None:
    """The Node was deleted and made again under the same name: the NodeTopology its old
    agent wrote names the old Node's uid until the new agent writes its own."""
    v = view(clocks)
    caplog.set_level(logging.WARNING, logger="gpulet.scorer")
    orphan = node_topology_object("a", H100, uid="uid-of-the-node-before")
    v.set_node_topology_object(orphan)
    v.set_node_object(node_object("a", PCIE))
    assert gpus(v, "a") == 4
    for _ in range(3):  # relists, and the Node's own updates
        v.set_node_topology_object(orphan)
        v.set_node_object(node_object("a", PCIE))
    logged = [r.getMessage() for r in caplog.records if "nodetopology-orphan" in r.getMessage()]
    assert logged == [
        f"event=nodetopology-orphan node=a owner_uid=uid-of-the-node-before "
        f"node_uid={node_uid('a')}"
    ]
    v.set_node_topology_object(node_topology_object("a", H100))  # the new agent's
    assert gpus(v, "a") == 8


def test_a_nodetopology_naming_another_nodes_uid_is_ignored(clocks: Clocks) -> None:
    """A compromised agent on b writes a NodeTopology for a, owned by b's Node."""
    v = view(clocks)
    v.set_node_object(node_object("a", PCIE))
    v.set_node_object(node_object("b", PCIE))
    v.set_node_topology_object(node_topology_object("a", H100, uid=node_uid("b")))
    assert gpus(v, "a") == 4
    no_owner = node_topology_object("b", H100)
    no_owner["metadata"]["ownerReferences"] = []
    v.set_node_topology_object(no_owner)
    assert gpus(v, "b") == 4


def test_a_deleted_node_is_unknown_whatever_nodetopology_and_lease_are_left(
    clocks: Clocks,
) -> None:
    v = view(clocks)
    v.set_node_object(node_object("a", H100, legacy=False))
    v.set_node_topology_object(node_topology_object("a", H100))
    v.set_lease_object(lease_object("a", renewed=clocks.wall))
    v.remove_node("a")
    assert v.node("a") is None and v.node_names() == [] and v.quiet_nodes() == []
    answer = filter_names(Extender(v), "a")
    assert answer.node_names == () and "a" in answer.failed_and_unresolvable_nodes
    # A new Node of that name, before its agent writes anything: the old object is not its.
    v.set_node_object(node_object("a", H100, legacy=False, uid="uid-of-the-new-node"))
    assert gpus(v, "a") is None


def test_a_nodetopology_that_cannot_be_read_is_a_problem_not_a_crash(clocks: Clocks) -> None:
    v = view(clocks)
    v.set_node_object(node_object("a", H100, legacy=False))
    bad = node_topology_object("a", H100)
    bad["spec"]["gpus"][0]["memory_mib"] = "lots"
    assert v.set_node_topology_object(bad) == "a"
    assert problem(v, "a").startswith("its NodeTopology a cannot be read: gpus[0]")
    bad["spec"] = "not an object"
    v.set_node_topology_object(bad)
    assert "its NodeTopology a cannot be read" in problem(v, "a")
    assert v.set_node_topology_object({"metadata": {}, "spec": {}}) is None
    v.set_node_topology_object(node_topology_object("a", H100))
    assert gpus(v, "a") == 8


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)


@st.composite
def mangled_specs(draw: st.DrawFn) -> dict[str, Any]:
    """A valid spec with one field, at any depth, replaced by any JSON value."""
    spec: Any = node_topology_object("a", H100)["spec"]
    holder, key = spec, draw(st.sampled_from(sorted(spec)))
    while isinstance(holder[key], dict | list) and holder[key] and draw(st.booleans()):
        holder = holder[key]
        key = draw(
            st.sampled_from(sorted(holder) if isinstance(holder, dict) else range(len(holder)))
        )
    holder[key] = draw(json_values)
    return spec  # type: ignore[no-any-return]


@settings(max_examples=examples(150), deadline=None)
@given(spec=mangled_specs() | json_values)
def test_whatever_a_nodetopology_says_the_node_reads_or_has_a_problem(spec: Any) -> None:
    v = ClusterView()
    v.set_node_object(node_object("a", H100, legacy=False))
    obj = node_topology_object("a", H100)
    obj["spec"] = spec
    v.set_node_topology_object(obj)
    info = v.node("a")
    assert info is not None
    if info.topo is None:
        assert info.problem is not None and info.problem.startswith("its NodeTopology a ")
    else:
        assert info.problem is None and info.topo.node == "a"


def test_an_unchanged_nodetopology_is_not_read_again(
    clocks: Clocks, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads = []

    def counted(doc: Any) -> Any:
        reads.append(doc["node"])
        return from_document(doc)

    monkeypatch.setattr(scorer.cluster, "from_document", counted)
    v = view(clocks)
    v.set_node_object(node_object("a", H100))
    v.set_node_topology_object(node_topology_object("a", H100))
    [(_, before)] = v.nodes(["a"])
    for _ in range(3):
        relisted = node_topology_object("a", H100)
        relisted["metadata"]["resourceVersion"] = "99"
        v.set_node_topology_object(relisted)
        v.set_node_object(node_object("a", H100, legacy=False))  # annotations removed
    [(_, after)] = v.nodes(["a"])
    assert reads == ["a"] and before == after


def test_when_the_node_switches_form_its_generation_changes_once(clocks: Clocks) -> None:
    """Decisions kept for the annotation's topology are not reused for the NodeTopology's."""
    v = view(clocks)
    v.set_node_object(node_object("a", PCIE))
    [(_, annotation)] = v.nodes(["a"])
    v.set_node_topology_object(node_topology_object("a", H100))
    [(_, published)] = v.nodes(["a"])
    v.set_node_object(node_object("a", PCIE, legacy=False))
    [(_, after)] = v.nodes(["a"])
    assert annotation < published == after


NODE_EVENTS = st.lists(
    st.one_of(
        st.tuples(st.just("node"), st.sampled_from(["uid-1", "uid-2"]), st.booleans()),
        st.tuples(st.just("topology"), st.sampled_from(["uid-1", "uid-2", ""]), st.just(False)),
        st.tuples(st.just("remove-node"), st.just(""), st.just(False)),
        st.tuples(st.just("remove-topology"), st.just(""), st.just(False)),
    ),
    max_size=12,
)


@settings(max_examples=examples(200), deadline=None)
@given(events=NODE_EVENTS)
def test_the_topology_is_the_owned_nodetopologys_else_the_annotations(
    events: list[tuple[str, str, bool]],
) -> None:
    """Whatever order the three watches deliver in: the node is known while its Node is,
    and reads as its NodeTopology when it owns it (8 GPUs), else as its annotation (4)."""
    v = ClusterView()
    node: tuple[str, bool] | None = None  # (uid, has the annotation)
    owner: str | None = None
    for kind, uid, annotated in events:
        if kind == "node":
            v.set_node_object(node_object("a", PCIE, legacy=annotated, uid=uid))
            node = (uid, annotated)
        elif kind == "topology":
            obj = node_topology_object("a", H100, uid=uid or "x")
            if not uid:
                obj["metadata"].pop("ownerReferences")
            v.set_node_topology_object(obj)
            owner = uid or None
        elif kind == "remove-node":
            v.remove_node("a")
            node = None
        else:
            v.remove_node_topology("a")
            owner = None
        if node is None:
            assert v.node("a") is None
        elif owner == node[0]:
            assert gpus(v, "a") == 8
        else:
            assert gpus(v, "a") == (4 if node[1] else None)


# ---- liveness ---------------------------------------------------------------------------


def new_form(v: ClusterView, name: str, clocks: Clocks, **lease: Any) -> None:
    """A node as an agent of this release leaves it: its Node bare, its NodeTopology, its
    Lease renewed now (`lease`: `lease_object`'s arguments, to override)."""
    v.set_node_object(node_object(name, H100, legacy=False))
    v.set_node_topology_object(node_topology_object(name, H100))
    v.set_lease_object(lease_object(name, **{"renewed": clocks.wall, **lease}))


def test_a_quiet_lease_filters_the_node_within_its_duration_with_its_reason(
    clocks: Clocks,
) -> None:
    v = view(clocks)
    new_form(v, "a", clocks)
    extender = Extender(v)
    clocks.advance(nt.LEASE_DURATION_S)
    assert filter_names(extender, "a").node_names == ("a",)
    clocks.advance(1)
    answer = filter_names(extender, "a")
    assert answer.node_names == () and v.quiet_nodes() == ["a"]
    assert answer.failed_and_unresolvable_nodes["a"] == (
        "the gpulet agent on this node has not reported for 61 s (its heartbeat Lease "
        "kube-system/gpulet-node-a last renewed 2026-12-05T12:00:00.000000Z; stale after "
        "60 s): is its DaemonSet pod running?"
    )
    v.set_lease_object(lease_object("a", renewed=clocks.wall))  # renewed: back
    assert filter_names(extender, "a").node_names == ("a",) and v.quiet_nodes() == []


def test_lease_liveness_is_the_renewal_seen_not_the_writers_clock(clocks: Clocks) -> None:
    v = view(clocks)
    new_form(v, "slow", clocks, renewed=clocks.wall - 3600)
    assert v.quiet_nodes() == ["slow"]  # first sight: aged by its stamp
    for _ in range(5):
        clocks.advance(nt.HEARTBEAT_S)
        last = clocks.wall - 3600
        v.set_lease_object(lease_object("slow", renewed=last))
        assert v.quiet_nodes() == []
    clocks.advance(30)
    v.set_lease_object(lease_object("slow", renewed=last))  # seen again, not renewed
    clocks.advance(31)
    assert v.quiet_nodes() == ["slow"]


def test_a_lease_first_seen_long_unrenewed_is_quiet_at_once(clocks: Clocks) -> None:
    """After an extender restart, a node that died before is not given a minute more."""
    v = view(clocks)
    new_form(v, "dead", clocks, renewed=clocks.wall - 600)
    new_form(v, "ahead", clocks, renewed=clocks.wall + 600)
    assert v.quiet_nodes() == ["dead"]
    assert "has not reported for 600 s" in problem(v, "dead")


@pytest.mark.parametrize(
    ("duration", "quiet_after"),
    [(30, 30), (0, 1), (-5, 1), (100_000, 3600), ("sixty", 180), (None, 180), (True, 180)],
)
def test_the_leases_duration_is_held_to_bounds_and_else_the_setting(
    clocks: Clocks, duration: object, quiet_after: int
) -> None:
    v = view(clocks, stale_after=180)
    lease = lease_object("a", renewed=clocks.wall)
    if duration is None:
        del lease["spec"]["leaseDurationSeconds"]
    else:
        lease["spec"]["leaseDurationSeconds"] = duration
    v.set_node_object(node_object("a", H100, legacy=False))
    v.set_node_topology_object(node_topology_object("a", H100))
    v.set_lease_object(lease)
    clocks.advance(quiet_after)
    assert v.quiet_nodes() == []
    clocks.advance(1)
    assert v.quiet_nodes() == ["a"]
    assert f"stale after {quiet_after} s" in problem(v, "a")


def test_a_lease_without_renew_time_ages_from_when_it_was_seen(clocks: Clocks) -> None:
    v = view(clocks)
    lease = lease_object("a", renewed=clocks.wall - 600)
    del lease["spec"]["renewTime"]
    v.set_node_object(node_object("a", H100, legacy=False))
    v.set_node_topology_object(node_topology_object("a", H100))
    v.set_lease_object(lease)
    assert v.quiet_nodes() == []
    clocks.advance(61)
    assert "last renewed None" in problem(v, "a")


def test_a_nodetopology_without_a_lease_goes_quiet_after_the_default_duration(
    clocks: Clocks,
) -> None:
    v = view(clocks)
    v.set_node_object(node_object("a", H100, legacy=False))
    clocks.advance(500)  # the Node alone: not judged (nothing says an agent serves it)
    v.set_node_topology_object(node_topology_object("a", H100))
    clocks.advance(nt.LEASE_DURATION_S)
    assert v.quiet_nodes() == []
    clocks.advance(1)
    assert v.quiet_nodes() == ["a"]
    assert problem(v, "a") == (
        "the gpulet agent on this node has not reported for 61 s (it has a NodeTopology but "
        "no heartbeat Lease gpulet-node-a; stale after 60 s): is its DaemonSet pod running?"
    )
    v.set_lease_object(lease_object("a", renewed=clocks.wall))
    assert v.quiet_nodes() == []
    clocks.advance(30)
    v.remove_lease("a")  # deleted by hand: a minute from now, not from the first sight
    clocks.advance(nt.LEASE_DURATION_S)
    assert v.quiet_nodes() == []
    clocks.advance(1)
    assert v.quiet_nodes() == ["a"]


def test_a_lease_seen_before_its_node_counts(clocks: Clocks) -> None:
    v = view(clocks)
    v.set_lease_object(lease_object("a", renewed=clocks.wall))
    clocks.advance(61)
    v.set_node_object(node_object("a", H100, legacy=False))
    v.set_node_topology_object(node_topology_object("a", H100))
    assert v.quiet_nodes() == ["a"]
    assert v.lease_nodes() == ["a"]


def test_the_lease_is_judged_not_the_heartbeat_annotation_when_both_are_there(
    clocks: Clocks,
) -> None:
    v = view(clocks)
    v.set_node_object(node_object("a", H100, heartbeat=stamp(clocks.wall - 10_000)))
    assert v.quiet_nodes() == ["a"]
    v.set_lease_object(lease_object("a", renewed=clocks.wall))
    assert v.quiet_nodes() == []  # the annotation is the old agent's, left behind


def test_a_lease_not_named_for_a_node_is_ignored(clocks: Clocks) -> None:
    v = view(clocks)
    v.set_node_object(node_object("a", H100, legacy=False))
    v.set_node_topology_object(node_topology_object("a", H100))
    other = lease_object("a", renewed=clocks.wall + 10_000)
    for name in ("gpulet-scheduler", "a", "gpulet-node-"):
        other["metadata"]["name"] = name
        assert v.set_lease_object(other) is None
    assert v.set_lease_object({"spec": {}}) is None
    assert v.lease_nodes() == []
    clocks.advance(61)
    assert v.quiet_nodes() == ["a"]  # judged as having no Lease


def test_with_the_check_off_nothing_is_judged(clocks: Clocks) -> None:
    v = view(clocks, stale_after=0)
    new_form(v, "stale-lease", clocks, renewed=clocks.wall - 10_000)
    v.set_node_object(node_object("no-lease", H100, legacy=False))
    v.set_node_topology_object(node_topology_object("no-lease", H100))
    v.set_node_object(node_object("old", H100, heartbeat=stamp(clocks.wall - 10_000)))
    clocks.advance(10_000)
    assert v.quiet_nodes() == []
    names = ("stale-lease", "no-lease", "old")
    assert filter_names(Extender(v), *names).node_names == names


def test_renewals_do_not_touch_the_nodes_generation(clocks: Clocks) -> None:
    v = view(clocks)
    new_form(v, "a", clocks)
    [(_, before)] = v.nodes(["a"])
    for _ in range(3):
        clocks.advance(nt.HEARTBEAT_S)
        v.set_lease_object(lease_object("a", renewed=clocks.wall))
    [(_, after)] = v.nodes(["a"])
    assert before == after >= 0


@settings(max_examples=examples(200), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    duration=st.integers(1, 120),
    steps=st.lists(st.tuples(st.integers(0, 90), st.booleans()), max_size=15),
)
def test_a_node_is_quiet_exactly_when_its_lease_went_unrenewed_past_its_duration(
    duration: int, steps: list[tuple[int, bool]]
) -> None:
    clocks = Clocks()
    v = view(clocks)
    new_form(v, "a", clocks, duration_s=duration)
    last = clocks.mono
    for seconds, renew in steps:
        clocks.advance(seconds)
        if renew:
            v.set_lease_object(lease_object("a", renewed=clocks.wall, duration_s=duration))
            last = clocks.mono
        assert (v.quiet_nodes() == ["a"]) == (clocks.mono - last > duration)
