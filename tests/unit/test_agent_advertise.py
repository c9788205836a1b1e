"""The node-level aggregates the agent keeps in its Node's status (agent.advertise), through
the real client against the API server stand-in: written once, not again while the Node says
them, again when kubelet zeroes them or the Node is registered anew; a failed write is tried
again; and kube-scheduler's view (the Node's allocatable) counts them."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from kubernetes.client import ApiClient, CoreV1Api

from agent.advertise import CapacityAdvertiser
from gpulet.api.resources import (
    BATCH_CORE_RESOURCE,
    BATCH_MEMORY_RESOURCE,
    CORE_RESOURCE,
    GPU_RESOURCE,
    MEMORY_RESOURCE,
    node_aggregates,
)
from gpulet.kube.calls import CoreCalls
from gpulet.standins.apiserver import ApiServerStandIn
from tests.nodes import shipped
from tests.unit.test_agent_path import wait_for

NODE = "gpu-a"
TOPO = replace(shipped("dgx-h100"), node=NODE)
#: 8 GPUs of 81,559 MiB (the DGX H100 fixture).
WANT = {CORE_RESOURCE: "800", MEMORY_RESOURCE: str(sum(g.memory_mib for g in TOPO.gpus))}
STATUS_PATH = f"/api/v1/nodes/{NODE}/status"


def register(server: ApiServerStandIn) -> None:
    """The Node as kubelet registers it: its own resources, nothing of gpulet's counted yet."""
    kubelet = {"cpu": "224", "memory": "2Ti", "pods": "110", GPU_RESOURCE: "32"}
    status = {"capacity": dict(kubelet), "allocatable": dict(kubelet)}
    server.create_node({"metadata": {"name": NODE}, "spec": {}, "status": status})


@pytest.fixture
def server() -> Iterator[ApiServerStandIn]:
    with ApiServerStandIn() as server:
        register(server)
        yield server


@pytest.fixture
def running() -> Iterator[list[CapacityAdvertiser]]:
    started: list[CapacityAdvertiser] = []
    yield started
    for part in started:
        part.stop()


def advertiser(server: ApiServerStandIn, running: list[CapacityAdvertiser]) -> CapacityAdvertiser:
    client = ApiClient(server.configuration())
    a = CapacityAdvertiser(CoreCalls(client), TOPO, retry_s=0.05)
    a.start()
    running.append(a)
    return a


def status(server: ApiServerStandIn) -> dict[str, Any]:
    node = server.get_node(NODE)
    assert node is not None
    return dict(node.get("status") or {})


def advertised(server: ApiServerStandIn) -> bool:
    s = status(server)
    return all(
        (s.get(part) or {}).get(name) == value
        for part in ("capacity", "allocatable")
        for name, value in WANT.items()
    )


def caught_up(server: ApiServerStandIn, a: CapacityAdvertiser) -> None:
    """Wait until the advertiser has seen the Node as it is now, and has nothing to write."""

    def done() -> bool:
        node = server.get_node(NODE) or {}
        version = str(node.get("metadata", {}).get("resourceVersion") or "")
        return a.watched_version == version and a.settled.is_set()

    wait_for(done)


def status_writes(server: ApiServerStandIn, since: int = 0) -> int:
    return sum(1 for m, p in server.requests[since:] if m == "PATCH" and p.startswith(STATUS_PATH))


def test_the_aggregates_are_the_sum_over_the_gpus() -> None:
    """100 percent and all the memory of each GPU, whatever their sizes; none without GPUs."""
    assert node_aggregates([81559, 40960]) == {CORE_RESOURCE: 200, MEMORY_RESOURCE: 122519}
    assert node_aggregates([]) == {CORE_RESOURCE: 0, MEMORY_RESOURCE: 0}


def test_the_node_status_carries_them_beside_kubelets_own(
    server: ApiServerStandIn, running: list[CapacityAdvertiser]
) -> None:
    a = advertiser(server, running)
    wait_for(lambda: advertised(server) and a.settled.is_set())
    s = status(server)
    # kubelet's own resources are left as they were.
    assert s["capacity"]["cpu"] == "224" and s["allocatable"][GPU_RESOURCE] == "32"
    # What kube-scheduler reads: the Node through the real client, its allocatable.
    with ApiClient(server.configuration()) as client:
        node: Any = CoreV1Api(client).read_node(NODE)
    assert {k: node.status.allocatable[k] for k in WANT} == WANT
    assert {k: node.status.capacity[k] for k in WANT} == WANT
    assert status_writes(server) == 1


def test_the_measured_batch_aggregates_are_added_and_moved_when_set(
    server: ApiServerStandIn, running: list[CapacityAdvertiser]
) -> None:
    """Nothing of batch before a measurement; then both batch resources beside the
    aggregates, in one write; a new measurement moves them."""
    a = advertiser(server, running)
    wait_for(lambda: advertised(server))
    caught_up(server, a)
    assert BATCH_CORE_RESOURCE not in status(server)["allocatable"]
    mark = len(server.requests)
    a.set_batch({BATCH_CORE_RESOURCE: 420, BATCH_MEMORY_RESOURCE: 301234})
    wait_for(lambda: status(server)["allocatable"].get(BATCH_CORE_RESOURCE) == "420")
    caught_up(server, a)
    assert status_writes(server, mark) == 1
    s = status(server)
    assert s["capacity"][BATCH_MEMORY_RESOURCE] == "301234" and advertised(server)
    a.set_batch({BATCH_CORE_RESOURCE: 0, BATCH_MEMORY_RESOURCE: 0})
    wait_for(lambda: status(server)["allocatable"].get(BATCH_CORE_RESOURCE) == "0")


def test_an_agent_restarted_on_a_node_that_says_them_writes_nothing(
    server: ApiServerStandIn, running: list[CapacityAdvertiser]
) -> None:
    first = advertiser(server, running)
    wait_for(lambda: advertised(server) and first.settled.is_set())
    first.stop()
    mark = len(server.requests)
    second = advertiser(server, running)
    caught_up(server, second)
    assert status_writes(server, mark) == 0 and second.writes == 0


def test_values_zeroed_by_kubelet_are_written_again(
    server: ApiServerStandIn, running: list[CapacityAdvertiser]
) -> None:
    """kubelet zeroes extended resources it does not manage when its Node is registered
    anew; the agent's watch sees it and writes them again."""
    a = advertiser(server, running)
    wait_for(lambda: advertised(server) and a.settled.is_set())
    zero = {CORE_RESOURCE: "0", MEMORY_RESOURCE: "0"}
    with ApiClient(server.configuration()) as client:
        CoreCalls(client).patch_node_status(
            NODE, {"status": {"capacity": zero, "allocatable": zero}}
        )
    wait_for(lambda: advertised(server) and a.writes == 2)


def test_a_value_in_another_form_is_the_same_value(
    server: ApiServerStandIn, running: list[CapacityAdvertiser]
) -> None:
    """The API server writes quantities in canonical form (1000 as "1k"): a Node that says
    the values in another form says them, and is not written again (a write that came back
    in another form would otherwise be written for ever); a value that is not a quantity
    is written over."""
    a = advertiser(server, running)
    wait_for(lambda: advertised(server) and a.settled.is_set())
    other = {CORE_RESOURCE: "0.8k", MEMORY_RESOURCE: WANT[MEMORY_RESOURCE] + "000m"}
    with ApiClient(server.configuration()) as client:
        calls = CoreCalls(client)
        calls.patch_node_status(NODE, {"status": {"capacity": other, "allocatable": other}})
        caught_up(server, a)
        assert a.writes == 1 and status(server)["capacity"][CORE_RESOURCE] == "0.8k"
        calls.patch_node_status(NODE, {"status": {"capacity": {CORE_RESOURCE: "lots"}}})
    wait_for(lambda: advertised(server) and a.writes == 2)


def test_a_node_registered_anew_gets_them_again(
    server: ApiServerStandIn, running: list[CapacityAdvertiser]
) -> None:
    a = advertiser(server, running)
    wait_for(lambda: advertised(server) and a.settled.is_set())
    server.delete_node(NODE)
    register(server)
    wait_for(lambda: advertised(server) and a.writes == 2)


def test_a_failed_write_is_logged_and_tried_again(
    server: ApiServerStandIn, running: list[CapacityAdvertiser], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "gpulet.agent")
    server.fail_next("PATCH", "nodes/gpu-a/status", 500, times=2)
    a = advertiser(server, running)
    wait_for(lambda: advertised(server) and a.settled.is_set())
    failed = [m for m in caplog.messages if m.startswith("event=capacity-advertise-failed")]
    assert len(failed) == 2 and f"node={NODE} error='500 " in failed[0]
    assert any(
        m == f"event=capacity-advertised node={NODE} "
        f"{CORE_RESOURCE}=800 {MEMORY_RESOURCE}={WANT[MEMORY_RESOURCE]}"
        for m in caplog.messages
    )


def test_nothing_is_written_while_there_is_no_node(running: list[CapacityAdvertiser]) -> None:
    with ApiServerStandIn() as server:
        a = advertiser(server, running)
        assert a.reflector.synced.wait(5)
        assert not a.settled.is_set() or status_writes(server) == 0
        register(server)
        wait_for(lambda: advertised(server))
        assert status_writes(server) == 1
        a.stop()
