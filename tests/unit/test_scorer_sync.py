"""The extender against an API server that serves NodeTopology objects and heartbeat Leases
(the stand-in, over HTTP, through the real `kubernetes` client): it reads nodes of this
release from their NodeTopology and Lease and nodes of the previous one from their
annotations, follows both as they change, ignores what does not belong to a node, and keeps
serving the old form when the CRD is not applied yet."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from gpulet.api import nodetopology as nt
from gpulet.api.stamps import stamp
from gpulet.kube.calls import CoreCalls, ObjectCalls
from gpulet.kube.crd import node_topology_crd
from gpulet.standins.apiserver import ApiServerStandIn
from gpulet.standins.objects import (
    container,
    lease_object,
    node_object,
    node_topology_object,
    pod_object,
)
from scorer.app import Scorer, build
from scorer.cluster import ClusterView
from scorer.config import ScorerConfig
from scorer.kube import ClusterSync
from tests.nodes import shipped
from tests.unit.test_scorer_kube import filter_, start_scorer, wait_for

H100 = shipped("dgx-h100")
PCIE = shipped("pcie-4gpu")
LEASES = "coordination.k8s.io/v1"
EIGHT = pod_object("eight", container(gpus=8), uid="u-eight")


def put(api: ApiServerStandIn, api_version: str, plural: str, obj: dict[str, Any]) -> None:
    """Create `obj`, or replace it if it exists."""
    meta = obj["metadata"]
    if api.get_object(api_version, plural, meta["name"], meta.get("namespace", "")) is None:
        api.create_object(api_version, plural, obj)
    else:
        api.update_object(api_version, plural, obj)


def put_topology(api: ApiServerStandIn, obj: dict[str, Any]) -> None:
    put(api, nt.API_VERSION, nt.PLURAL, obj)


def put_lease(api: ApiServerStandIn, obj: dict[str, Any]) -> None:
    put(api, LEASES, "leases", obj)


def topology_of(api: ApiServerStandIn, name: str, topo: Any) -> dict[str, Any]:
    """The NodeTopology of node `name`, owned by its Node (the uid the API server gave it)."""
    node = api.get_node(name)
    assert node is not None
    return node_topology_object(name, topo, uid=node["metadata"]["uid"])


def new_form(api: ApiServerStandIn, name: str, topo: Any = H100, **lease: Any) -> None:
    """A node whose agent is of this release: a bare Node, its NodeTopology, its Lease."""
    api.create_node(node_object(name, topo, legacy=False))
    put_topology(api, topology_of(api, name, topo))
    put_lease(api, lease_object(name, **{"renewed": time.time(), **lease}))


def gpus(scorer: Scorer, name: str) -> int | None:
    info = scorer.server.extender.view.node(name)
    return None if info is None or info.topo is None else len(info.topo.gpus)


@pytest.fixture
def api() -> Iterator[ApiServerStandIn]:
    with ApiServerStandIn() as server:
        server.create_crd(node_topology_crd())
        yield server


@pytest.fixture
def scorer(api: ApiServerStandIn) -> Iterator[Scorer]:
    s = start_scorer(api)
    yield s
    s.stop()


def test_old_and_new_nodes_and_a_restart(api: ApiServerStandIn) -> None:
    api.create_node(node_object("old", H100, heartbeat=stamp(time.time())))
    new_form(api, "new")
    api.create_node(node_object("mid", PCIE))  # its agent is being upgraded
    put_topology(api, topology_of(api, "mid", H100))
    put_lease(api, lease_object("mid", renewed=time.time()))
    first = start_scorer(api)
    try:
        assert first.sync is not None and len(first.sync.reflectors) == 4
        assert [gpus(first, n) for n in ("old", "new", "mid")] == [8, 8, 8]
        stored = api.create_pod(EIGHT)
        names = ("old", "new", "mid")
        assert filter_(first, stored, names).node_names == names
    finally:
        first.stop()
    # A restarted extender lists the NodeTopology objects: the bare Nodes' topologies.
    for name in ("a", "b", "c"):
        new_form(api, name, PCIE)
    again = start_scorer(api)
    try:
        assert [gpus(again, n) for n in ("a", "b", "c", "new", "mid")] == [4, 4, 4, 8, 8]
        assert again.server.extender.view.quiet_nodes() == []
    finally:
        again.stop()


def test_a_replaced_nodetopology_and_deleted_objects_are_followed(
    api: ApiServerStandIn, scorer: Scorer
) -> None:
    new_form(api, "a")
    new_form(api, "b")
    wait_for(lambda: gpus(scorer, "a") == gpus(scorer, "b") == 8)
    put_topology(api, topology_of(api, "a", PCIE))  # the hardware changed
    wait_for(lambda: gpus(scorer, "a") == 4)
    view = scorer.server.extender.view
    api.delete_object(nt.API_VERSION, nt.PLURAL, "a")  # the node has no topology left
    wait_for(lambda: gpus(scorer, "a") is None)
    info = view.node("a")
    assert info is not None and "has no NodeTopology" in (info.problem or "")
    api.delete_node("b")  # its NodeTopology goes with it (garbage collection)
    wait_for(lambda: view.node("b") is None and "b" not in view.node_topology_names())
    api.delete_object(LEASES, "leases", "gpulet-node-a", nt.DEFAULT_NAMESPACE)
    wait_for(lambda: "a" not in view.lease_nodes())


def test_a_lease_that_stops_being_renewed_filters_its_node(
    api: ApiServerStandIn, scorer: Scorer
) -> None:
    new_form(api, "a", duration_s=1)  # quiet after a second, for the test
    new_form(api, "b")
    stored = api.create_pod(EIGHT)
    wait_for(lambda: gpus(scorer, "a") == 8)
    wait_for(lambda: filter_(scorer, stored, ["a", "b"]).node_names == ("b",))
    reason = filter_(scorer, stored, ["a"]).failed_and_unresolvable_nodes["a"]
    assert "heartbeat Lease kube-system/gpulet-node-a last renewed" in reason
    put_lease(api, lease_object("a", renewed=time.time(), duration_s=60))
    wait_for(lambda: filter_(scorer, stored, ["a", "b"]).node_names == ("a", "b"))


def test_what_does_not_belong_to_a_node_is_ignored(api: ApiServerStandIn, scorer: Scorer) -> None:
    api.create_node(node_object("a", PCIE))
    api.create_node(node_object("b", PCIE))
    # A NodeTopology named after a, owned by b's Node (a compromised agent on b).
    foreign = topology_of(api, "b", H100)
    foreign["metadata"]["name"] = "a"
    put_topology(api, foreign)
    # One the parser refuses (two GPUs with the same index; the schema cannot tell).
    refused = topology_of(api, "b", H100)
    refused["spec"]["gpus"][1]["index"] = 0
    put_topology(api, refused)
    # A Lease with gpulet's labels that is not named after a node; one in another namespace.
    other = lease_object("a", renewed=time.time())
    other["metadata"]["name"] = "someone-else"
    put_lease(api, other)
    put_lease(api, lease_object("b", renewed=time.time(), namespace="default"))
    view = scorer.server.extender.view
    wait_for(lambda: sorted(view.node_topology_names()) == ["a", "b"])
    # Known, and refused: not merely not listed yet.
    wait_for(lambda: (known := view.node("b")) is not None and known.problem is not None)
    assert gpus(scorer, "a") == 4  # still its annotation
    info = view.node("b")
    assert info is not None and (info.problem or "").startswith(
        "its NodeTopology b cannot be read: gpus: duplicate GPU index"
    )
    assert view.lease_nodes() == []


def test_without_the_crd_the_annotations_are_served_until_it_is_applied(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="gpulet.scorer")
    with ApiServerStandIn() as api:
        api.create_node(node_object("old", H100, heartbeat=stamp(time.time())))
        api.create_node(node_object("new", H100, legacy=False))
        view = ClusterView()
        core = CoreCalls(client.ApiClient(api.configuration()))
        sync = ClusterSync(core, view, watch_timeout_s=5, absent_retry_s=0.1)
        sync.start()
        try:
            assert sync.wait_ready(10)  # the missing collection counts as empty
            info = view.node("old")
            assert info is not None and info.topo is not None
            path = nt.COLLECTION_PATH
            wait_for(
                lambda: len([p for _, p in api.requests if p == path]) >= 3
            )  # several lists, one warning
            ObjectCalls(
                core.client, "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
            ).create(node_topology_crd())
            put_topology(api, topology_of(api, "new", H100))
            wait_for(lambda: getattr(view.node("new"), "topo", None) is not None)
        finally:
            sync.stop()
    messages = [r.getMessage() for r in caplog.records]
    absent = [m for m in messages if m.startswith("event=collection-absent")]
    assert len(absent) == 1 and f"path={path}" in absent[0]
    assert f"event=collection-found path={path}" in messages


def test_the_lease_namespace_is_the_configured_one(api: ApiServerStandIn) -> None:
    new_form(api, "a", namespace="gpulet")
    put_lease(api, lease_object("a", renewed=time.time() - 600, namespace=nt.DEFAULT_NAMESPACE))
    config = ScorerConfig(host="127.0.0.1", port=0, watch_timeout_s=5, lease_namespace="gpulet")
    scorer = build(config, api.configuration())
    scorer.start()
    try:
        assert scorer.sync is not None and scorer.sync.wait_ready(10)
        view = scorer.server.extender.view
        wait_for(lambda: view.lease_nodes() == ["a"])
        assert view.quiet_nodes() == []  # the stale one in kube-system is not read
    finally:
        scorer.stop()


def test_watches_that_end_are_resumed_not_listed_again(
    api: ApiServerStandIn, scorer: Scorer
) -> None:
    """The extender lists all Nodes and all bound pods once per start: a watch the server
    ends (its timeout) is opened again from where it was, never by a new LIST (a periodic
    resync would be one per node per period at 5,000 nodes)."""
    new_form(api, "a")
    view = scorer.server.extender.view
    for round_ in range(3):
        api.drop_watches()
        new_form(api, f"after-{round_}")  # seen only through a resumed watch
        wait_for(lambda r=round_: gpus(scorer, f"after-{r}") == 8)  # type: ignore[misc]
    assert view.quiet_nodes() == []
    lists = [
        path.split("?")[0]
        for method, path in api.requests
        if method == "GET" and "watch=true" not in path
    ]
    assert sorted(p for p in lists if p in ("/api/v1/nodes", "/api/v1/pods")) == [
        "/api/v1/nodes",
        "/api/v1/pods",
    ]
    watches = [p for m, p in api.requests if "watch=true" in p and p.startswith("/api/v1/nodes")]
    assert len(watches) >= 4  # one, then one more per ending
