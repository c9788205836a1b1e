"""Preemption through kube-scheduler's own machinery (DefaultPreemption), against the real
kube-scheduler with the configuration deploy/ ships: the node advertises its aggregates
(gpulet.io/gpu-core, gpu-memory), kube-scheduler finds the node short of them and proposes
victims from those counts, and the extender's preempt verb checks them per GPU and adds the
fewest lower-priority pods that free a GPU. The cluster: conftest.py."""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from gpulet.standins.objects import container
from tests.e2e.conftest import NODE, World
from tests.e2e.test_real_kubernetes import assignment, create, gone, new_pod, running
from tests.kube.cluster import wait_until

pytestmark = pytest.mark.e2e

_classes = itertools.count(1)


@pytest.fixture
def priorities(world: World) -> Iterator[dict[str, str]]:
    """PriorityClasses of this test's own: low ones for the slices, a high one for the pod
    that preempts them (name by value)."""
    api = client.SchedulingV1Api(world.core.api_client)
    n = next(_classes)
    names = {value: f"gpulet-e2e-{n}-{value}" for value in (100, 101, 200, 1000)}
    for value, name in names.items():
        api.create_priority_class(
            client.V1PriorityClass(metadata=client.V1ObjectMeta(name=name), value=value)
        )
    yield {str(v): name for v, name in names.items()}
    for name in names.values():
        api.delete_priority_class(name)


def slice_pod(name: str, core: int, priority_class: str, policy: str) -> dict[str, Any]:
    spec = container("main", gpus=1, core=core, memory=1024)
    # Small CPU and memory: sixteen of them fit the node's 64 CPUs with room to spare.
    spec["resources"] = {
        part: {**limits, "cpu": "100m", "memory": "64Mi"}
        for part, limits in spec["resources"].items()
    }
    pod = new_pod(name, spec, annotations={"gpulet.io/gpu-policy": policy}, grace_s=1, node=NODE)
    pod["spec"]["priorityClassName"] = priority_class
    return pod


def gpu_of(pod: dict[str, Any]) -> str:
    (share,) = assignment(pod).gpus
    return share.uuid


def test_a_high_priority_slice_takes_a_gpu_from_lower_priority_slices(
    world: World, ns: str, priorities: dict[str, str]
) -> None:
    """Eight GPUs, each holding two 50% slices: kube-scheduler sees 800 of 800 percent taken,
    and for a 60% slice of higher priority proposes the two lowest-priority pods, which sit on
    two different GPUs (50% free on each: no room). The extender adds the fewest pods more:
    the other slice of one of those GPUs. Three pods go, the new slice runs on that GPU."""
    gpus = len(world.topology(NODE).gpus)
    # One 50% slice on every GPU (spread), then a second on every GPU (binpack fills each
    # GPU's other half); the second ones have the lowest priorities: 100 for the first two.
    firsts = [f"first-{i}" for i in range(gpus)]
    seconds = [f"second-{i}" for i in range(gpus)]
    held: dict[str, str] = {}
    named: dict[str, str] = {}  # uid -> name

    def settle(name: str) -> None:
        pod = running(world, ns, name)
        held[name] = gpu_of(pod)
        named[pod["metadata"]["uid"]] = name

    # One at a time: kubelet's Allocate names no pod, and the agent does not guess between
    # pods of one shape created in the same second (docs/assignment.md, "Ambiguous").
    for name in firsts:
        create(world, ns, slice_pod(name, 50, priorities["200"], "spread"))
        settle(name)
    assert len(set(held.values())) == gpus, "one first slice on every GPU"
    for i, name in enumerate(seconds):
        create(world, ns, slice_pod(name, 50, priorities["100" if i < 2 else "101"], "binpack"))
        settle(name)
    assert held["second-0"] != held["second-1"]

    create(world, ns, slice_pod("urgent", 60, priorities["1000"], "binpack"))
    pod = running(world, ns, "urgent", timeout=120)
    assert pod["spec"]["nodeName"] == NODE

    # kube-scheduler asked the extender, and the extender answered with three victims.
    calls = [c for c in world.recorder.for_pod("urgent") if c.verb == "preempt"]
    assert calls, "kube-scheduler called the preempt verb"
    asked = calls[0].request["NodeNameToMetaVictims"][NODE]["Pods"]
    answered = calls[0].response["NodeNameToMetaVictims"][NODE]["Pods"]
    assert {named[p["UID"]] for p in asked} == {"second-0", "second-1"}
    victims = {named[p["UID"]] for p in answered}
    assert len(answered) == 3 and {"second-0", "second-1"} <= victims
    (third,) = victims - {"second-0", "second-1"}
    # The other half of second-0's or second-1's GPU.
    assert held[third] in (held["second-0"], held["second-1"]), answered
    assert third.startswith("first-"), answered

    # They are gone; nobody else is; the new slice holds the GPU they freed.
    for name in ("second-0", "second-1", third):
        wait_until(functools.partial(gone, world, ns, name), 60, watch=world.cp.processes, why=name)
    for name in set(firsts + seconds) - {"second-0", "second-1", third}:
        assert world.pod(ns, name)["status"]["phase"] == "Running", name
    assert gpu_of(pod) == held[third]
