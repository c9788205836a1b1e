"""The extender's cluster view, case by case (scorer/cluster.py, scorer/kube.py's pod
handling): exactly what a node's pods add up to, which pod events count and which do not, and
Lease objects the view must take without a crash. Written against the mutants `make mutate`
found alive (docs/mutation.md); the invariant itself is tests/unit/test_cluster_invariant.py."""

from __future__ import annotations

import logging

import pytest

from gpulet.api.assignment import Assignment, ContainerAssignment, dump_assignment
from gpulet.api.resources import ASSIGNMENT_ANNOTATION
from gpulet.api.share import GpuShare, GpuUsage
from gpulet.api.stamps import stamp
from gpulet.placement import Capacity
from gpulet.standins.objects import container, lease_object, node_object, pod_object
from scorer.cluster import ClusterView
from scorer.extender import Extender
from scorer.kube import apply_pod
from scorer.wire import ExtenderArgs
from tests.nodes import shipped
from tests.unit.test_scorer_heartbeat import Clocks

PCIE = shipped("pcie-4gpu")  # 4 GPUs of 46068 MiB, NICs mlx5_0 and mlx5_1
H100 = shipped("dgx-h100")  # 8 GPUs
GPU = [g.uuid for g in PCIE.gpus]
SLOTS = 3  # not the default
CAPACITY = Capacity(gpu_slots=SLOTS, nic_slots=4)


@pytest.fixture
def v() -> ClusterView:
    view = ClusterView(CAPACITY)
    view.set_node_object(node_object("a", PCIE))
    view.set_node_object(node_object("b", PCIE))
    return view


def on(node: str, *gpus: GpuShare, nics: tuple[str, ...] = ()) -> Assignment:
    return Assignment(node, (ContainerAssignment("c", gpus, nics),))


def bind(v: ClusterView, uid: str, assignment: Assignment, node: str | None = None) -> None:
    """The API shows `uid` bound to `node` (default: the assignment's) with `assignment`."""
    v.set_pod(uid, node or assignment.node, dump_assignment(assignment))


def test_a_node_counts_every_share_of_every_pod_on_it(v: ClusterView) -> None:
    """Slices on one GPU add up, a whole GPU charges every slot and all of the GPU's memory
    (more than its assignment recorded), each NIC counts once per container using it, and a
    GPU the node no longer has is skipped without losing the shares after it."""
    bind(v, "p1", on("a", GpuShare(GPU[0], 20, 1000), nics=("mlx5_0",)))
    bind(v, "p2", on("a", GpuShare(GPU[0], 30, 2000), nics=("mlx5_0", "mlx5_1")))
    gone = GpuShare("GPU-not-on-this-node", 10, 10)
    bind(v, "p3", on("a", gone, GpuShare(GPU[2], 10, 500)))
    bind(v, "p4", on("a", GpuShare.held_whole(GPU[1], 1000)))
    state = v.state("a")
    assert dict(state.gpus) == {
        0: GpuUsage(2, 50, 3000, 0),
        1: GpuUsage(SLOTS, 100, PCIE.gpus[1].memory_mib, 1),
        2: GpuUsage(1, 10, 500, 0),
    }
    assert dict(state.nic_slots) == {"mlx5_0": 2, "mlx5_1": 1}


def test_a_pod_shown_on_another_node_leaves_the_first(v: ClusterView) -> None:
    bind(v, "p", on("a", GpuShare(GPU[0], 20, 1000), nics=("mlx5_0",)))
    assert v.state("a").nic_slots
    bind(v, "p", on("b", GpuShare(GPU[0], 20, 1000), nics=("mlx5_0",)))
    assert not v.state("a").gpus and not v.state("a").nic_slots
    assert dict(v.state("b").nic_slots) == {"mlx5_0": 1}


def test_an_assumption_is_kept_while_its_pod_is_not_bound(v: ClusterView) -> None:
    v.assume("p", on("a", GpuShare(GPU[0], 20, 1000)))
    v.set_pod("p", None, None)
    assert list(v.pods()) == [("p", "a", True)]
    v.set_pod("never-assumed", None, None)  # an unknown pod not yet bound: nothing to do
    assert list(v.pods()) == [("p", "a", True)]


def test_a_bound_pod_shown_unbound_or_without_a_usable_assignment_stops_counting(
    v: ClusterView,
) -> None:
    share = GpuShare(GPU[0], 20, 1000)
    bind(v, "p", on("a", share))
    v.set_pod("p", None, None)
    assert list(v.pods()) == []
    bind(v, "p", on("a", share))
    v.set_pod("p", "a", None)  # no assignment
    assert list(v.pods()) == []
    bind(v, "p", on("a", share))
    bind(v, "p", on("b", share), node="a")  # an assignment for another node
    assert list(v.pods()) == [] and not v.state("a").gpus and not v.state("b").gpus
    bind(v, "p", on("a", share))
    v.set_pod("p", "a", "{not json")
    assert list(v.pods()) == [] and not v.state("a").gpus


def test_an_unreadable_assignment_is_logged_with_its_pod_and_reason(
    v: ClusterView, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="gpulet.scorer"):
        v.set_pod("p-uid", "a", "{not json")
    [record] = [r for r in caplog.records if "bad-assignment" in r.getMessage()]
    assert record.getMessage().startswith("event=bad-assignment pod_uid=p-uid reason='")
    assert "gpulet.io/assignment" in record.getMessage()  # the parser's own words


def test_an_assumption_does_not_replace_a_bound_pod_but_replaces_an_assumption(
    v: ClusterView,
) -> None:
    bound = on("a", GpuShare(GPU[0], 20, 1000))
    bind(v, "p", bound)
    v.assume("p", on("b", GpuShare(GPU[1], 20, 1000)))
    assert v.assignment("p") == bound
    assert list(v.pods()) == [("p", "a", False)]
    v.assume("q", on("a", GpuShare(GPU[2], 20, 1000)))
    newer = on("b", GpuShare(GPU[3], 30, 1000))
    v.assume("q", newer)
    assert v.assignment("q") == newer
    assert v.assignment("unknown") is None


def test_leases_the_view_never_held_or_cannot_read_are_harmless(v: ClusterView) -> None:
    v.remove_lease("a")  # a delete for a Lease never seen (a relist dropped it)
    lease = {"metadata": {"name": "gpulet-node-a", "namespace": "gpulet"}}
    for spec in (None, {"renewTime": 12345}, {"renewTime": None}):
        obj = dict(lease) if spec is None else {**lease, "spec": spec}
        assert v.set_lease_object(obj) == "a"
        v.remove_lease("a")
    info = v.node("a")
    assert info is not None and info.problem is None


def test_an_annotation_that_is_not_text_does_not_count(v: ClusterView) -> None:
    pod = pod_object("p", container(gpus=1))
    pod["spec"]["nodeName"] = "a"
    pod["metadata"].setdefault("annotations", {})[ASSIGNMENT_ANNOTATION] = 5
    apply_pod(v, "ADDED", pod)
    assert list(v.pods()) == []


def test_a_node_removed_after_a_decision_is_not_decided_from_memory() -> None:
    """The extender keeps decisions by node generation; an unknown node's must match none."""
    view = ClusterView(Capacity(gpu_slots=SLOTS))
    view.set_node_object(node_object("a", PCIE))
    extender = Extender(view)
    pod = pod_object("p", container(gpus=1))
    assert extender.filter(ExtenderArgs(pod, node_names=("a",))).names() == ("a",)
    view.remove_node("a")
    answer = extender.filter(ExtenderArgs(pod, node_names=("a",)))
    assert answer.names() == ()
    assert "has not seen node" in answer.failed_and_unresolvable_nodes["a"]


DURATION = 40


def leased(clocks: Clocks) -> ClusterView:
    view = ClusterView(clock=lambda: clocks.mono, wall_clock=lambda: clocks.wall)
    view.set_node_object(node_object("a", PCIE))
    return view


def test_a_first_renewal_that_cannot_be_read_counts_from_when_it_was_seen() -> None:
    clocks = Clocks()
    view = leased(clocks)
    lease = lease_object("a", renewed=clocks.wall, duration_s=DURATION)
    lease["spec"]["renewTime"] = "not a time"
    view.set_lease_object(lease)
    clocks.advance(DURATION)
    assert view.quiet_nodes() == []
    clocks.advance(1)
    assert view.quiet_nodes() == ["a"]


def test_a_later_heartbeat_counts_from_when_it_was_seen_whatever_its_stamp_says() -> None:
    """Only a first sighting is aged by its stamp: a node whose clock runs an hour behind
    stays alive while its heartbeat annotation changes."""
    clocks = Clocks()
    view = ClusterView(clock=lambda: clocks.mono, wall_clock=lambda: clocks.wall, stale_after=60)
    view.set_node_object(node_object("a", PCIE, heartbeat=stamp(clocks.wall)))
    clocks.advance(10)
    view.set_node_object(node_object("a", PCIE, heartbeat=stamp(clocks.wall - 3600)))
    clocks.advance(60)
    assert view.quiet_nodes() == []
    clocks.advance(1)
    assert view.quiet_nodes() == ["a"]


def test_an_assumption_counts_to_its_deadline_and_its_expiry_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clocks = Clocks()
    view = ClusterView(clock=lambda: clocks.mono, assume_ttl=30)
    view.set_node_object(node_object("a", PCIE))
    view.assume("p-uid", on("a", GpuShare(GPU[0], 20, 1000)))
    clocks.advance(30)
    assert list(view.pods()) == [("p-uid", "a", True)]
    clocks.advance(0.5)
    with caplog.at_level(logging.INFO, logger="gpulet.scorer"):
        assert list(view.pods()) == []
    messages = [r.getMessage() for r in caplog.records]
    assert "event=assumption-expired pod_uid=p-uid node=a" in messages


def test_pods_bound_before_their_node_was_seen_count_on_it(v: ClusterView) -> None:
    """The pods' and the nodes' watches do not keep step: a pod may show up first."""
    bind(v, "p", on("c", GpuShare(GPU[0], 20, 1000)))
    bind(v, "q", on("a", GpuShare(GPU[0], 30, 1000)))
    v.set_node_object(node_object("c", PCIE))
    assert dict(v.state("c").gpus) == {0: GpuUsage(1, 20, 1000, 0)}


def gpus_seen(v: ClusterView, name: str) -> int:
    info = v.node(name)
    assert info is not None and info.topo is not None
    return len(info.topo.gpus)


def test_a_changed_topology_annotation_is_read_again(v: ClusterView) -> None:
    assert gpus_seen(v, "a") == 4
    v.set_node_object(node_object("a", H100))
    assert gpus_seen(v, "a") == 8


def test_a_node_the_view_cannot_place_on_keeps_its_name_capacity_and_reason(
    v: ClusterView,
) -> None:
    node = node_object("a", PCIE)
    node["metadata"]["annotations"] = {"gpulet.io/topology": "{not json"}
    v.set_node_object(node)
    node = node_object("c", PCIE)
    node["metadata"]["annotations"] = None
    v.set_node_object(node)
    a, c = v.node("a"), v.node("c")
    assert a is not None and c is not None
    assert (a.name, a.capacity, a.topo) == ("a", CAPACITY, None)
    assert (a.problem or "").startswith("its gpulet.io/topology annotation cannot be read: ")
    assert (c.name, c.capacity, c.topo) == ("c", CAPACITY, None)
    assert (c.problem or "").startswith("node has no NodeTopology")


def test_annotations_that_are_not_text_are_none() -> None:
    """No topology, and no heartbeat to judge the node by, however long it stays."""
    clocks = Clocks()
    view = ClusterView(clock=lambda: clocks.mono, wall_clock=lambda: clocks.wall, stale_after=60)
    node = node_object("a", PCIE)
    node["metadata"]["annotations"] = {"gpulet.io/topology": 5, "gpulet.io/heartbeat": 7}
    view.set_node_object(node)
    info = view.node("a")
    assert info is not None and (info.problem or "").startswith("node has no NodeTopology")
    clocks.advance(3600)
    assert view.quiet_nodes() == []


@pytest.mark.parametrize("meta", [None, {}, {"name": 5}])
def test_a_node_without_a_name_is_refused(v: ClusterView, meta: object) -> None:
    with pytest.raises(ValueError, match=r"^a Node has no metadata\.name$"):
        v.set_node_object({"metadata": meta})


def test_an_unchanged_heartbeat_annotation_goes_stale_however_often_the_node_is_sent() -> None:
    clocks = Clocks()
    view = ClusterView(clock=lambda: clocks.mono, wall_clock=lambda: clocks.wall, stale_after=60)
    node = node_object("a", PCIE, heartbeat="2026-12-06T12:00:00Z")
    clocks.wall = 1_796_558_400.0  # that heartbeat's time: seen fresh
    view.set_node_object(node)
    for _ in range(3):
        clocks.advance(30)
        view.set_node_object(node)  # the Node changed elsewhere, not its heartbeat
    assert view.quiet_nodes() == ["a"]
    info = view.node("a")
    assert info is not None
    assert "(last gpulet.io/heartbeat 2026-12-06T12:00:00Z; stale after 60 s)" in (
        info.problem or ""
    )


def test_nodes_of_one_hardware_model_share_a_shape_and_others_do_not(v: ClusterView) -> None:
    """The extender decides "never fits" once per shape: two models must not share one."""
    v.set_node_object(node_object("c", H100))
    a, b, c = v.node("a"), v.node("b"), v.node("c")
    assert a is not None and b is not None and c is not None
    assert a.shape == b.shape >= 0
    assert c.shape >= 0 and c.shape != a.shape


def test_a_gpu_whose_slots_are_taken_takes_no_slice(v: ClusterView) -> None:
    """The placement engine counts slots with the cluster's capacity, not its default."""
    for gpu in GPU:
        for n in range(SLOTS):
            bind(v, f"{gpu}-{n}", on("a", GpuShare(gpu, 10, 1000)))
    extender = Extender(v)
    pod = pod_object("x", container(gpus=1, core=10, memory=1000))
    answer = extender.filter(ExtenderArgs(pod, node_names=("a", "b")))
    assert answer.names() == ("b",)
