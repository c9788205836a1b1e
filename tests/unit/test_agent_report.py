"""What the agent writes to say what its node is and that it is alive, through the real
client against the API server stand-in: its NodeTopology (agent.publish), its Lease
(agent.heartbeat), and the removal of the previous release's Node annotations."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import pytest
from kubernetes.client import ApiClient, ApiException

from agent.heartbeat import LeaseHeartbeat, lease_duration
from agent.publish import LegacyAnnotations, TopologyPublisher
from gpulet.api import nodetopology as nt
from gpulet.api.resources import HEARTBEAT_ANNOTATION, TOPOLOGY_ANNOTATION
from gpulet.api.share import Idle
from gpulet.api.stamps import stamp_micro
from gpulet.kube.calls import CoreCalls, ObjectCalls, leases, node_topologies
from gpulet.kube.crd import node_topology_crd
from gpulet.standins.apiserver import ApiServerStandIn
from gpulet.topology.document import dumps, from_document, loads, to_document
from tests.nodes import shipped
from tests.unit.test_agent_path import wait_for

NODE = "gpu-a"
NAMESPACE = "gpulet-system"
TOPO = replace(shipped("pcie-4gpu"), node=NODE)
#: The same node after a driver upgrade: another document.
UPGRADED = replace(TOPO, driver="999.99")
TOPOLOGY_PATH = f"{nt.COLLECTION_PATH}/{NODE}"
LEASE_PATH = f"/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases/{nt.lease_name(NODE)}"
WRITES = ("POST", "PUT", "PATCH", "DELETE")


@dataclass
class Api:
    server: ApiServerStandIn
    client: ApiClient
    core: CoreCalls

    @property
    def topologies(self) -> ObjectCalls:
        return node_topologies(self.client)

    @property
    def leases(self) -> ObjectCalls:
        return leases(self.client, NAMESPACE)

    def topology(self) -> dict[str, Any] | None:
        return self.topologies.find(NODE)

    def lease(self) -> dict[str, Any] | None:
        return self.leases.find(nt.lease_name(NODE))

    def node(self) -> dict[str, Any]:
        node = self.server.get_node(NODE)
        assert node is not None
        return node

    def mark(self) -> int:
        return len(self.server.requests)

    def writes(self, since: int, path: str = "") -> list[tuple[str, str]]:
        """The writes sent since `since` (a `mark`) whose path starts with `path`."""
        return [
            (m, p)
            for m, p in self.server.requests[since:]
            if m in WRITES and p.split("?")[0].startswith(path)
        ]


def create_node(server: ApiServerStandIn, annotations: dict[str, str] | None = None) -> str:
    """The Node, as kubelet registers it (with `annotations`): its uid."""
    meta: dict[str, Any] = {"name": NODE, "annotations": {"kubelet": "yes", **(annotations or {})}}
    return str(server.create_node({"metadata": meta, "spec": {}, "status": {}})["metadata"]["uid"])


@pytest.fixture
def api() -> Iterator[Api]:
    with ApiServerStandIn() as server:
        client = ApiClient(server.configuration())
        server.create_crd(node_topology_crd())
        create_node(server)
        yield Api(server, client, CoreCalls(client))


@pytest.fixture
def running() -> Iterator[list[TopologyPublisher | LeaseHeartbeat]]:
    """What a test started, stopped after it."""
    parts: list[TopologyPublisher | LeaseHeartbeat] = []
    yield parts
    for part in reversed(parts):
        part.stop()


def publisher(api: Api, running: list[Any], topo: Any = TOPO, **kwargs: Any) -> TopologyPublisher:
    p = TopologyPublisher(api.core, topo, retry_s=0.05, **kwargs)
    p.start()
    running.append(p)
    return p


def settled(p: TopologyPublisher, api: Api) -> None:
    """Wait until the publisher's watch shows the object as it is and nothing is left to write."""

    def done() -> bool:
        obj = api.topology()
        version = obj["metadata"]["resourceVersion"] if obj else ""
        return p.watched_version == version and p.settled.is_set()

    wait_for(done)


# ---- the NodeTopology ----------------------------------------------------------------------


def test_the_node_topology_carries_the_document_and_is_owned_by_the_node(
    api: Api, running: list[Any]
) -> None:
    publisher(api, running)
    obj = api.topology()
    assert obj is not None
    assert obj["metadata"]["name"] == NODE
    assert obj["spec"]["node"] == NODE
    assert from_document(nt.document_of(obj)) == TOPO
    assert obj["metadata"]["ownerReferences"] == [
        {"apiVersion": "v1", "kind": "Node", "name": NODE, "uid": api.node()["metadata"]["uid"]}
    ]


def test_a_restart_on_the_same_hardware_writes_nothing(api: Api, running: list[Any]) -> None:
    first = publisher(api, running)
    settled(first, api)
    first.stop()
    before = api.topology()
    assert before is not None
    mark = api.mark()
    again = publisher(api, running)
    settled(again, api)
    after = api.topology()
    assert after is not None
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    # The create it tried was refused (409): it exists; read, it is as it should be.
    assert api.writes(mark) == [("POST", nt.COLLECTION_PATH)]


def test_a_changed_document_replaces_it_once(api: Api, running: list[Any]) -> None:
    p = publisher(api, running)
    settled(p, api)
    mark = api.mark()
    p.set_topology(TOPO)  # the same: nothing to write
    p.set_topology(dumps(UPGRADED))
    wait_for(lambda: (api.topology() or {}).get("spec", {}).get("driver") == "999.99")
    settled(p, api)
    assert api.writes(mark) == [("PUT", TOPOLOGY_PATH)]
    obj = api.topology()
    assert obj is not None and from_document(nt.document_of(obj)) == UPGRADED


def test_a_deleted_node_topology_is_created_again(api: Api, running: list[Any]) -> None:
    p = publisher(api, running)
    settled(p, api)
    first = api.topology()
    assert first is not None
    api.topologies.delete(NODE)
    wait_for(lambda: (api.topology() or first)["metadata"]["uid"] != first["metadata"]["uid"])
    again = api.topology()
    assert again is not None and again["spec"] == first["spec"]


def test_a_node_created_again_owns_the_next_node_topology(api: Api, running: list[Any]) -> None:
    """The Node deleted and registered again (a new uid): the garbage collector deletes the
    NodeTopology it owned; the agent's next one names the new Node."""
    p = publisher(api, running)
    settled(p, api)
    api.server.delete_node(NODE)
    assert api.topology() is None  # collected with its Node
    uid = create_node(api.server)
    wait_for(lambda: nt.owner_uid(api.topology() or {}) == uid)


def test_a_spec_changed_by_someone_else_is_put_back(api: Api, running: list[Any]) -> None:
    p = publisher(api, running)
    settled(p, api)
    api.topologies.patch(NODE, {"spec": {"driver": "1.0"}})
    wait_for(lambda: (api.topology() or {}).get("spec", {}).get("driver") == TOPO.driver)
    settled(p, api)


def test_the_measured_idle_room_goes_into_the_status_and_a_spec_change_keeps_it(
    api: Api, running: list[Any]
) -> None:
    """The room for batch (agent.idle) is written into the object's status, once; the
    extender reads it back per GPU; a later change of the document keeps it; an object
    whose status someone else changed gets it back."""
    p = publisher(api, running)
    settled(p, api)
    mark = api.mark()
    idle = {0: Idle(60, 30000), 1: Idle(0, 0)}
    p.set_idle(idle, measured=1_800_000_000.0)
    p.set_idle(idle, measured=1_800_000_000.0)  # the same: nothing more to write
    wait_for(lambda: "status" in (api.topology() or {}))
    settled(p, api)
    assert api.writes(mark) == [("PUT", TOPOLOGY_PATH)]
    obj = api.topology()
    assert obj is not None and nt.idle_of(obj) == idle
    assert obj["status"]["measuredAt"] == "2027-01-15T08:00:00Z"
    p.set_topology(dumps(UPGRADED))
    wait_for(lambda: (api.topology() or {}).get("spec", {}).get("driver") == "999.99")
    assert nt.idle_of(api.topology() or {}) == idle
    api.topologies.patch(NODE, {"status": {"idle": [{"index": 0, "core": 100, "memory_mib": 1}]}})
    wait_for(lambda: nt.idle_of(api.topology() or {}) == idle)


def test_the_first_publication_fails_in_the_callers_thread(api: Api) -> None:
    api.server.fail_next("POST", "nodetopologies", 403)
    p = TopologyPublisher(api.core, TOPO)
    with pytest.raises(ApiException) as raised:
        p.start()
    assert raised.value.status == 403
    p.stop()


def test_a_failed_write_is_logged_and_tried_again(
    api: Api, running: list[Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "gpulet.agent")
    p = publisher(api, running)
    settled(p, api)
    api.server.fail_next("PUT", "nodetopologies", 500)
    api.server.fail_next("PUT", "nodetopologies", 409)  # then someone else's change
    p.set_topology(UPGRADED)
    wait_for(lambda: (api.topology() or {}).get("spec", {}).get("driver") == "999.99")
    assert any(
        m.startswith(f"event=topology-publish-failed node={NODE} error='500 ")
        for m in caplog.messages
    )


# ---- the Lease -----------------------------------------------------------------------------


class Clock:
    def __init__(self, now: float = 1_800_000_000.25) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def heartbeat(api: Api, pod: str = "agent-x", **kwargs: Any) -> LeaseHeartbeat:
    return LeaseHeartbeat(api.client, NODE, NAMESPACE, pod, **kwargs)


def test_the_lease_is_created_then_renewed_with_one_put_each_time(api: Api) -> None:
    clock = Clock()
    hb = heartbeat(api, clock=clock)
    hb.renew_now()
    lease = api.lease()
    assert lease is not None
    assert lease["metadata"]["labels"] == nt.LEASE_LABELS
    acquired = stamp_micro(clock.now)
    assert lease["spec"] == {
        "holderIdentity": f"{NODE}/agent-x",
        "leaseDurationSeconds": 60,
        "acquireTime": acquired,
        "renewTime": acquired,
        "leaseTransitions": 0,
    }
    for _ in range(3):
        clock.now += 20
        mark = api.mark()
        hb.renew_now()
        assert api.server.requests[mark:] == [("PUT", LEASE_PATH)]
        spec = (api.lease() or {})["spec"]
        assert (spec["renewTime"], spec["acquireTime"]) == (stamp_micro(clock.now), acquired)


def test_a_lease_held_by_another_pod_is_taken_over(api: Api) -> None:
    clock = Clock()
    api.leases.create(
        nt.lease(NODE, NAMESPACE, f"{NODE}/agent-old", renewed=1.0, acquired=1.0, transitions=2)
    )
    heartbeat(api, clock=clock).renew_now()
    spec = (api.lease() or {})["spec"]
    assert spec["holderIdentity"] == f"{NODE}/agent-x"
    assert spec["leaseTransitions"] == 3
    assert spec["acquireTime"] == spec["renewTime"] == stamp_micro(clock.now)
    # A restart of the same pod's agent is no transition.
    clock.now += 5
    heartbeat(api, clock=clock).renew_now()
    again = (api.lease() or {})["spec"]
    assert (again["leaseTransitions"], again["acquireTime"]) == (3, spec["acquireTime"])
    assert again["renewTime"] == stamp_micro(clock.now)


def test_a_refused_renewal_reads_the_lease_again(api: Api) -> None:
    clock = Clock()
    hb = heartbeat(api, clock=clock)
    hb.renew_now()
    api.server.fail_next("PUT", "leases", 409)
    clock.now += 20
    mark = api.mark()
    hb.renew_now()
    put, get = ("PUT", LEASE_PATH), ("GET", LEASE_PATH)
    assert api.server.requests[mark:] == [put, get, put]
    assert (api.lease() or {})["spec"]["renewTime"] == stamp_micro(clock.now)
    # Deleted: created again.
    api.leases.delete(nt.lease_name(NODE))
    clock.now += 20
    hb.renew_now()
    assert (api.lease() or {})["spec"]["renewTime"] == stamp_micro(clock.now)


def test_the_heartbeat_renews_on_its_own(api: Api, running: list[Any]) -> None:
    hb = heartbeat(api, heartbeat_s=0.1)
    hb.start()
    running.append(hb)
    assert (api.lease() or {})["spec"]["leaseDurationSeconds"] == 1
    seen: set[str] = set()

    def renewed_three_times() -> bool:
        seen.add((api.lease() or {})["spec"]["renewTime"])
        return len(seen) >= 4

    wait_for(renewed_three_times)


def test_a_failed_renewal_is_logged_and_the_heartbeat_goes_on(
    api: Api, running: list[Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "gpulet.agent")
    hb = heartbeat(api, heartbeat_s=0.1, retry_s=0.02)
    hb.start()
    running.append(hb)
    api.server.fail_next("PUT", "leases", 503, times=2)
    lease = f"lease={NAMESPACE}/{nt.lease_name(NODE)}"
    wait_for(lambda: f"event=heartbeat-failed {lease} error='503 " in "".join(caplog.messages))
    renewed = (api.lease() or {})["spec"]["renewTime"]
    wait_for(lambda: (api.lease() or {})["spec"]["renewTime"] != renewed)


def test_lease_duration_is_three_heartbeats() -> None:
    assert [lease_duration(s) for s in (20, 0.2, 7, 0.1, 10 / 3)] == [60, 1, 21, 1, 10]


def test_a_node_name_too_long_for_a_lease_is_refused(api: Api) -> None:
    with pytest.raises(ValueError, match="at most"):
        LeaseHeartbeat(api.client, "n" * (nt.MAX_NODE_NAME + 1), NAMESPACE, "agent-x")


# ---- the previous release's annotations ----------------------------------------------------

OLD = {
    TOPOLOGY_ANNOTATION: dumps(replace(TOPO, driver="1.0")),
    HEARTBEAT_ANNOTATION: "2026-12-06T00:00:00Z",
}


def fresh_node(api: Api, annotations: dict[str, str]) -> None:
    api.server.delete_node(NODE)
    create_node(api.server, annotations)


@pytest.mark.parametrize("annotations", [OLD, {HEARTBEAT_ANNOTATION: "2026-12-06T00:00:00Z"}])
def test_the_legacy_annotations_are_removed_in_one_patch(
    api: Api, running: list[Any], caplog: pytest.LogCaptureFixture, annotations: dict[str, str]
) -> None:
    caplog.set_level(logging.INFO, "gpulet.agent")
    fresh_node(api, annotations)
    mark = api.mark()
    p = publisher(api, running)
    p.retire_legacy()
    assert api.writes(mark, "/api/v1/nodes") == [("PATCH", f"/api/v1/nodes/{NODE}")]
    assert api.node()["metadata"]["annotations"] == {"kubelet": "yes"}
    keys = ",".join(sorted(annotations))
    assert f"event=legacy-annotations-removed node={NODE} keys={keys}" in caplog.messages
    settled(p, api)
    assert api.writes(mark, "/api/v1/nodes") == [("PATCH", f"/api/v1/nodes/{NODE}")]


def test_a_node_without_legacy_annotations_is_not_written(api: Api, running: list[Any]) -> None:
    mark = api.mark()
    p = publisher(api, running)
    p.retire_legacy()
    p.set_topology(UPGRADED)
    wait_for(lambda: (api.topology() or {}).get("spec", {}).get("driver") == "999.99")
    settled(p, api)
    assert api.writes(mark, "/api/v1/nodes") == []


def test_keep_mode_keeps_the_topology_annotation_current(api: Api, running: list[Any]) -> None:
    fresh_node(api, OLD)
    mark = api.mark()
    p = publisher(api, running, legacy="keep")
    p.retire_legacy()
    annotations = api.node()["metadata"]["annotations"]
    assert HEARTBEAT_ANNOTATION not in annotations
    assert loads(annotations[TOPOLOGY_ANNOTATION]) == TOPO
    assert api.writes(mark, "/api/v1/nodes") == [("PATCH", f"/api/v1/nodes/{NODE}")]
    p.set_topology(UPGRADED)
    wait_for(lambda: "999.99" in api.node()["metadata"]["annotations"][TOPOLOGY_ANNOTATION])
    settled(p, api)
    assert len(api.writes(mark, "/api/v1/nodes")) == 2
    assert api.node()["metadata"]["annotations"][TOPOLOGY_ANNOTATION] == dumps(UPGRADED)


def test_keep_mode_writes_a_current_annotation_only_when_it_differs(api: Api) -> None:
    """An agent restarted in keep mode finds the annotation as it would write it."""
    fresh_node(api, {TOPOLOGY_ANNOTATION: dumps(TOPO)})
    legacy = LegacyAnnotations(api.core, NODE, "keep")
    legacy.seen(api.node()["metadata"]["annotations"])
    mark = api.mark()
    legacy.settle(to_document(TOPO))
    assert api.writes(mark) == []
    legacy.settle(to_document(UPGRADED))
    assert api.writes(mark) == [("PATCH", f"/api/v1/nodes/{NODE}")]


def test_an_unknown_legacy_mode_is_refused(api: Api) -> None:
    with pytest.raises(ValueError, match="remove or keep"):
        LegacyAnnotations(api.core, NODE, "drop")


# ---- steady state --------------------------------------------------------------------------


def test_steady_state_is_one_lease_write_per_heartbeat(api: Api, running: list[Any]) -> None:
    """Started, with no hardware change: each heartbeat is one write, the Lease's PUT; the
    Node is not written at all, the NodeTopology not again."""
    fresh_node(api, OLD)
    p = publisher(api, running)
    hb = heartbeat(api, heartbeat_s=0.2)
    hb.start()
    running.append(hb)
    p.retire_legacy()
    settled(p, api)
    mark, began = api.mark(), time.monotonic()
    wait_for(lambda: len(api.writes(mark)) >= 6)
    assert time.monotonic() - began >= 5 * 0.2 * 0.9  # not more often than the heartbeat
    writes = api.writes(mark)
    assert writes == [("PUT", LEASE_PATH)] * len(writes)
    assert not [r for r in api.server.requests[mark:] if r[1].startswith("/api/v1/nodes")]
