"""No double booking: whatever the interleaving of binds, watch events (added, modified,
Terminating, finished, deleted), lists that lag their watch, 410s, restarts of the extender and
the passing of time, the API server never holds bound pods that together take a GPU, a slot or
a NIC beyond what the node has; and the extender's view counts exactly what a plain model of
its rules says it should.

Nothing here races: the extender's cluster view runs on a fake clock and is fed by a watch this
test controls. The API (`Api`) keeps the bound pods' event log the way a watch with
`spec.nodeName!=` sees it; a list is that log replayed up to a resourceVersion, and the watch
after it resumes from there, as kube's reflector does.

The one condition on the interleavings: the watch is never more than the assumption TTL
behind (before time passes the deadline of an assumption, the events up to now are
delivered). That is the extender's stated premise (`ASSUME_TTL_S`, docs/scorer.md).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from gpulet.api.assignment import Assignment, AssignmentError, parse_assignment
from gpulet.api.resources import ASSIGNMENT_ANNOTATION
from gpulet.placement import Capacity
from gpulet.standins.objects import container, node_object, pod_object
from scorer.cluster import ASSUME_TTL_S, ClusterView
from scorer.extender import ApiConflict, ApiNotFound, Extender
from scorer.kube import apply_pod, replace_pods
from scorer.wire import ExtenderArgs, ExtenderBindingArgs
from tests.grants import over_grants
from tests.nodes import shipped
from tests.strategies import examples

CAPACITY = Capacity(gpu_slots=3, nic_slots=2)
NODES = {"a": replace(shipped("pcie-4gpu"), node="a"), "b": replace(shipped("h100-vm"), node="b")}
FINISHED = ("Succeeded", "Failed")
NAMESPACE = "default"


# ---- the API server, as far as the extender and its bound-pods watch see it -----------------


@dataclass
class Api:
    """Pods by name; the log of what a watch on bound pods sees, with resourceVersions."""

    pods: dict[str, dict[str, Any]] = field(default_factory=dict)
    log: list[tuple[int, str, dict[str, Any]]] = field(default_factory=list)
    rv: int = 0
    #: Injected failures: the next annotate answers 409; the next bind is refused.
    conflict_next: bool = False
    refuse_next_bind: bool = False

    def _write(self, pod: dict[str, Any], was_bound: bool, deleted: bool = False) -> None:
        self.rv += 1
        pod["metadata"]["resourceVersion"] = str(self.rv)
        bound = bool(pod["spec"].get("nodeName"))
        if deleted:
            if was_bound:
                self.log.append((self.rv, "DELETED", copy.deepcopy(pod)))
        elif bound:
            self.log.append((self.rv, "MODIFIED" if was_bound else "ADDED", copy.deepcopy(pod)))

    def create(self, pod: dict[str, Any]) -> None:
        self.pods[pod["metadata"]["name"]] = pod
        self._write(pod, was_bound=False)

    # PodApi, as scorer.kube.KubePodApi answers it
    def get_pod(self, namespace: str, name: str) -> dict[str, Any]:
        if name not in self.pods:
            raise ApiNotFound(name)
        return copy.deepcopy(self.pods[name])

    def annotate_pod(
        self, namespace: str, name: str, resource_version: str, key: str, value: str
    ) -> None:
        pod = self.pods.get(name)
        if pod is None:
            raise ApiNotFound(name)
        if self.conflict_next or pod["metadata"]["resourceVersion"] != resource_version:
            self.conflict_next = False
            self.touch(name)  # someone else wrote it
            raise ApiConflict(f"{name} changed")
        pod["metadata"]["annotations"][key] = value
        self._write(pod, was_bound=bool(pod["spec"].get("nodeName")))

    def bind_pod(self, namespace: str, name: str, uid: str, node: str) -> None:
        pod = self.pods.get(name)
        if pod is None:
            raise ApiNotFound(name)
        if self.refuse_next_bind or pod["spec"].get("nodeName") or pod["metadata"]["uid"] != uid:
            self.refuse_next_bind = False
            raise ApiConflict(f"{name} cannot be bound")
        pod["spec"]["nodeName"] = node
        pod["status"]["phase"] = "Running"
        self._write(pod, was_bound=False)

    # what happens to pods meanwhile
    def touch(self, name: str) -> None:
        """A write that changes nothing gpulet reads (a status update, a label)."""
        pod = self.pods[name]
        pod["metadata"].setdefault("labels", {})["touched"] = str(self.rv)
        self._write(pod, was_bound=bool(pod["spec"].get("nodeName")))

    def terminate(self, name: str) -> None:
        """Graceful deletion: Terminating, still bound, still running."""
        pod = self.pods[name]
        pod["metadata"]["deletionTimestamp"] = "2026-12-06T12:00:00Z"
        self._write(pod, was_bound=bool(pod["spec"].get("nodeName")))

    def finish(self, name: str) -> None:
        pod = self.pods[name]
        pod["status"]["phase"] = "Succeeded"
        self._write(pod, was_bound=bool(pod["spec"].get("nodeName")))

    def delete(self, name: str) -> None:
        pod = self.pods.pop(name)
        self._write(pod, was_bound=bool(pod["spec"].get("nodeName")), deleted=True)

    def bound_at(self, rv: int) -> list[dict[str, Any]]:
        """The list of bound pods as of resourceVersion `rv`: the log replayed up to it."""
        pods: dict[str, dict[str, Any]] = {}
        for at, event, pod in self.log:
            if at > rv:
                break
            uid = pod["metadata"]["uid"]
            if event == "DELETED":
                pods.pop(uid, None)
            else:
                pods[uid] = pod
        return [copy.deepcopy(p) for p in pods.values()]

    def holding(self) -> dict[str, list[Assignment]]:
        """What the bound, unfinished pods hold now (Terminating ones included), by node."""
        held: dict[str, list[Assignment]] = {name: [] for name in NODES}
        for pod in self.pods.values():
            node = pod["spec"].get("nodeName")
            if node and pod["status"]["phase"] not in FINISHED:
                text = pod["metadata"]["annotations"][ASSIGNMENT_ANNOTATION]
                held[node].append(parse_assignment(text))
        return held


# ---- the model: what the view must count, by its documented rules ---------------------------


def _counted_as_bound(pod: dict[str, Any]) -> str | None:
    """The node a pod seen by the watch counts on (None: it does not count)."""
    node = pod["spec"].get("nodeName")
    text = pod["metadata"]["annotations"].get(ASSIGNMENT_ANNOTATION)
    if not node or pod["status"]["phase"] in FINISHED or text is None:
        return None
    try:
        return node if parse_assignment(text).node == node else None
    except AssignmentError:
        return None


@dataclass
class Model:
    #: The pods as the watch last showed them, by uid.
    seen: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Assumptions: uid -> (node, deadline).
    assumed: dict[str, tuple[str, float]] = field(default_factory=dict)

    def event(self, event: str, pod: dict[str, Any]) -> None:
        uid = pod["metadata"]["uid"]
        self.assumed.pop(uid, None)  # the API's word replaces (or ends) an assumption
        if event == "DELETED":
            self.seen.pop(uid, None)
        else:
            self.seen[uid] = pod

    def listed(self, pods: list[dict[str, Any]]) -> None:
        self.seen = {}
        for pod in pods:
            self.event("ADDED", pod)

    def expected(self, now: float) -> set[tuple[str, str, bool]]:
        counted = {
            (uid, node, False)
            for uid, pod in self.seen.items()
            if (node := _counted_as_bound(pod)) is not None
        }
        bound = {uid for uid, _, _ in counted}
        return counted | {
            (uid, node, True)
            for uid, (node, deadline) in self.assumed.items()
            if uid not in bound and deadline >= now
        }


# ---- the extender on a fake clock, fed by the controlled watch -------------------------------


class Cluster:
    """The API, an extender in API mode with its view, and the watch cursor between them."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.api = Api()
        self.model = Model()
        self.cursor = 0  # the resourceVersion the view's watch has delivered up to
        self.start_extender()

    def start_extender(self) -> None:
        """A fresh extender (a restart): it lists nodes and bound pods, assumptions are lost."""
        self.view = ClusterView(CAPACITY, clock=lambda: self.now)
        for name, topo in NODES.items():
            self.view.set_node_object(node_object(name, topo, slots=CAPACITY.gpu_slots))
        self.extender = Extender(self.view, self.api)
        self.model.assumed.clear()
        self.relist(self.api.rv)

    def relist(self, rv: int) -> None:
        """A list as of `rv` (the watch resumes after it)."""
        pods = self.api.bound_at(rv)
        replace_pods(self.view, pods)
        self.model.listed(pods)
        self.cursor = rv

    def deliver(self, count: int) -> None:
        for at, event, pod in [e for e in self.api.log if e[0] > self.cursor][:count]:
            apply_pod(self.view, event, copy.deepcopy(pod))
            self.model.event(event, pod)
            self.cursor = at

    def advance(self, seconds: float) -> None:
        later = self.now + seconds
        if any(deadline < later for _, deadline in self.model.assumed.values()):
            self.deliver(len(self.api.log))  # the watch is less than the TTL behind
        self.now = later

    def schedule(self, name: str, shape: list[dict[str, Any]], node: str | None) -> bool:
        """A pod created, filtered (unless `node` is given) and bound; whether it bound."""
        pod = pod_object(name, *[dict(c, name=f"c{i}") for i, c in enumerate(shape)])
        self.api.create(pod)
        if node is None:
            passed = self.extender.filter(ExtenderArgs(copy.deepcopy(pod), node_names=tuple(NODES)))
            if not passed.names():
                return False
            node = passed.names()[0]
        uid = pod["metadata"]["uid"]
        answer = self.extender.bind(ExtenderBindingArgs(name, NAMESPACE, uid, node))
        if answer.error:
            return False
        self.model.assumed[uid] = (node, self.now + ASSUME_TTL_S)
        return True

    def check(self) -> None:
        for name, held in self.api.holding().items():
            assert over_grants(NODES[name], held, CAPACITY) == [], f"double booking on {name}"
        assert set(self.view.pods()) == self.model.expected(self.now)


# ---- the stateful test ------------------------------------------------------------------------

shapes = st.one_of(
    st.builds(lambda g: [container(gpus=g)], st.integers(1, 4)),
    st.builds(
        lambda g, c, m: [container(gpus=g, core=c, memory=m)],
        st.integers(1, 2),
        st.sampled_from([10, 30, 60, 100]),
        st.sampled_from([1024, 20000, 40000]),
    ),
    st.builds(lambda g, r: [container(gpus=g, rdma=r)], st.integers(1, 2), st.integers(1, 2)),
)


class NoDoubleBooking(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.cluster = Cluster()
        self.count = 0

    def _pods(self, bound: bool) -> list[str]:
        return sorted(
            name
            for name, pod in self.cluster.api.pods.items()
            if bool(pod["spec"].get("nodeName")) == bound
        )

    @rule(
        shape=shapes,
        node=st.none() | st.sampled_from(sorted(NODES)),
        conflict=st.booleans(),
        refuse=st.integers(0, 5),
    )
    def schedule(
        self, shape: list[dict[str, Any]], node: str | None, conflict: bool, refuse: int
    ) -> None:
        self.count += 1
        self.cluster.api.conflict_next = conflict
        self.cluster.api.refuse_next_bind = refuse == 0
        self.cluster.schedule(f"p{self.count}", shape, node)

    @rule(count=st.integers(1, 4))
    def deliver(self, count: int) -> None:
        self.cluster.deliver(count)

    @rule(lag=st.integers(0, 4))
    def relist(self, lag: int) -> None:
        """A 410 or a broken watch: listed again, by a list that may predate recent writes."""
        self.cluster.relist(max(self.cluster.cursor, self.cluster.api.rv - lag))

    @rule()
    def restart(self) -> None:
        self.cluster.start_extender()

    @rule(seconds=st.sampled_from([1.0, 30.0, ASSUME_TTL_S + 1]))
    def advance(self, seconds: float) -> None:
        self.cluster.advance(seconds)

    @precondition(lambda self: bool(self._pods(bound=True)))
    @rule(data=st.data(), what=st.sampled_from(["touch", "terminate", "finish", "delete"]))
    def change_a_bound_pod(self, data: st.DataObject, what: str) -> None:
        name = data.draw(st.sampled_from(self._pods(bound=True)))
        getattr(self.cluster.api, what)(name)

    @precondition(lambda self: bool(self._pods(bound=False)))
    @rule(data=st.data())
    def delete_a_pending_pod(self, data: st.DataObject) -> None:
        self.cluster.api.delete(data.draw(st.sampled_from(self._pods(bound=False))))

    @invariant()
    def nothing_is_double_booked_and_the_view_counts_what_it_should(self) -> None:
        self.cluster.check()


NoDoubleBooking.TestCase.settings = settings(
    max_examples=examples(40),
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_no_double_booking = NoDoubleBooking.TestCase


# ---- the cases a planted bug must fail, each built on purpose --------------------------------

WHOLE_NODE = [container(gpus=4)]


@pytest.fixture
def cluster() -> Cluster:
    return Cluster()


def test_a_second_pod_that_fits_only_if_the_first_is_forgotten_is_refused(
    cluster: Cluster,
) -> None:
    """Back to back, before the watch shows the first bound: only the assumption stands
    between the second pod and the first pod's GPUs."""
    assert cluster.schedule("first", WHOLE_NODE, "a")
    assert not cluster.schedule("second", WHOLE_NODE, "a")
    cluster.check()


def test_a_list_older_than_a_bind_keeps_its_assumption(cluster: Cluster) -> None:
    """A relist whose list predates a bind must not drop that bind's assumption: the pod is
    bound, only the list does not show it yet."""
    before = cluster.api.rv
    assert cluster.schedule("first", WHOLE_NODE, "a")
    cluster.relist(before)
    assert not cluster.schedule("second", WHOLE_NODE, "a")
    cluster.check()
    cluster.deliver(len(cluster.api.log))  # the watch then shows it bound
    assert not cluster.schedule("third", WHOLE_NODE, "a")
    cluster.check()


def test_an_assumption_the_api_never_confirms_expires(cluster: Cluster) -> None:
    """A bound pod deleted before the watch showed it, its events lost to a 410: the list no
    longer has it, so only the assumption's expiry gives its GPUs back."""
    assert cluster.schedule("first", WHOLE_NODE, "a")
    cluster.api.delete("first")
    cluster.relist(cluster.api.rv)
    assert not cluster.schedule("second", WHOLE_NODE, "a")  # still assumed: conservative
    cluster.advance(ASSUME_TTL_S + 1)
    assert cluster.schedule("third", WHOLE_NODE, "a")
    cluster.check()


def test_a_terminating_pod_keeps_its_gpus_until_it_is_gone(cluster: Cluster) -> None:
    assert cluster.schedule("first", WHOLE_NODE, "a")
    cluster.deliver(len(cluster.api.log))
    cluster.api.terminate("first")
    cluster.deliver(len(cluster.api.log))
    assert not cluster.schedule("second", WHOLE_NODE, "a")
    cluster.api.delete("first")
    cluster.deliver(len(cluster.api.log))
    assert cluster.schedule("third", WHOLE_NODE, "a")
    cluster.check()
