"""The extender places a batch slice against the room its node's agent measured (the
NodeTopology's status), never against production's reservations, and writes its class into
the assignment; a node without a measurement, or with one it cannot read, takes none but
still takes production slices."""

from __future__ import annotations

import json
import logging

import pytest

from gpulet.api import nodetopology as nt
from gpulet.api.assignment import dump_assignment, parse_assignment
from gpulet.api.share import Idle
from gpulet.standins.objects import container, node_object, node_topology_object, pod_object
from scorer.cluster import ClusterView
from scorer.extender import Extender
from scorer.wire import ExtenderArgs, ExtenderBindingArgs
from tests.nodes import shipped

H100 = shipped("dgx-h100")


def measured(name: str, idle: dict[int, Idle] | None) -> dict[str, object]:
    obj = node_topology_object(name, H100)
    if idle is not None:
        obj["status"] = nt.idle_status(idle, 1_800_000_000.0)
    return obj


def extender(**nodes: dict[int, Idle] | None) -> Extender:
    v = ClusterView(stale_after=0)
    for name, idle in nodes.items():
        v.set_node_object(node_object(name, H100, legacy=False))
        v.set_node_topology_object(measured(name, idle))
    return Extender(v)


def batch_pod(uid: str = "u-b", core: int = 30, memory: int = 8192) -> dict[str, object]:
    return pod_object("b", container(gpus=1, batch_core=core, batch_memory=memory), uid=uid)


def test_a_batch_pod_goes_where_room_was_measured_and_is_bound_as_batch() -> None:
    e = extender(a={3: Idle(40, 20000)}, b=None)
    result = e.filter(ExtenderArgs(batch_pod(), node_names=("a", "b")))
    assert result.node_names == ("a",)
    assert "idle core for batch" in result.failed_nodes["b"]
    assert not e.bind(ExtenderBindingArgs("b", "default", "u-b", "a")).error
    assignment = e.view.assignment("u-b")
    assert assignment is not None
    (c,) = assignment.containers
    assert c.batch and c.gpus[0].uuid == H100.gpus[3].uuid and c.gpus[0].core == 30
    # What the agent reads: the class, in the annotation.
    text = dump_assignment(assignment)
    assert json.loads(text)["containers"]["main"]["class"] == "batch"
    assert parse_assignment(text) == assignment


def test_batch_slices_on_a_node_share_its_room_and_production_does_not_see_them() -> None:
    """The room of GPU3 takes one 30% slice, not two; a production slice of 100% of GPU3's
    reservation still fits beside it (it takes its compute back)."""
    e = extender(a={3: Idle(40, 20000)})
    e.filter(ExtenderArgs(batch_pod("u-1"), node_names=("a",)))
    assert not e.bind(ExtenderBindingArgs("b", "default", "u-1", "a")).error
    second = e.filter(ExtenderArgs(batch_pod("u-2"), node_names=("a",)))
    assert second.node_names == ()
    assert "10 percent idle core for batch" in second.failed_nodes["a"]
    prod = pod_object("p", container(gpus=8, core=100, memory=H100.gpus[0].memory_mib), uid="u-p")
    assert e.filter(ExtenderArgs(prod, node_names=("a",))).node_names == ("a",)


def test_a_status_that_cannot_be_read_leaves_the_node_to_production(
    caplog: pytest.LogCaptureFixture,
) -> None:
    v = ClusterView(stale_after=0)
    v.set_node_object(node_object("a", H100, legacy=False))
    obj = measured("a", None)
    obj["status"] = {"idle": [{"index": 0, "core": 900, "memory_mib": 1}]}
    with caplog.at_level(logging.WARNING, logger="gpulet.scorer"):
        v.set_node_topology_object(obj)
    assert "event=nodetopology-status-unreadable" in caplog.text
    e = Extender(v)
    assert e.filter(ExtenderArgs(batch_pod(), node_names=("a",))).node_names == ()
    slice_pod = pod_object("p", container(gpus=1, core=30, memory=8000), uid="u-p")
    assert e.filter(ExtenderArgs(slice_pod, node_names=("a",))).node_names == ("a",)


def test_a_new_measurement_moves_what_fits_and_reads_nothing_else_again() -> None:
    v = ClusterView(stale_after=0)
    v.set_node_object(node_object("a", H100, legacy=False))
    v.set_node_topology_object(measured("a", {0: Idle(20, 20000)}))
    e = Extender(v)
    assert e.filter(ExtenderArgs(batch_pod(), node_names=("a",))).node_names == ()
    before = v.node("a")
    assert before is not None
    v.set_node_topology_object(measured("a", {0: Idle(90, 20000)}))
    # Only the status moved: the spec is not read again, nor the node's placer rebuilt.
    after = v.node("a")
    assert after is not None and after.placer is before.placer and after.topo is before.topo
    assert e.filter(ExtenderArgs(batch_pod(), node_names=("a",))).node_names == ("a",)
    assert v.state("a").idle_of(0) == Idle(90, 20000)
