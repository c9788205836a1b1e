"""The preempt verb as kube-scheduler calls it (`POST <urlPrefix>/preempt`, an
ExtenderPreemptionArgs in, an ExtenderPreemptionResult out, JSON as its Go types write it):
kube-scheduler's victims, counted on aggregates, are corrected per GPU from the pods the
extender's watch has shown, with their priorities."""

from __future__ import annotations

import json
from typing import Any

import pytest

import scorer.extender
from gpulet.api.assignment import dump_assignment
from gpulet.api.resources import ASSIGNMENT_ANNOTATION
from gpulet.placement import Capacity
from gpulet.placement.podspec import pod_ask
from gpulet.standins.objects import container, node_object, pod_object
from scorer.cluster import ClusterView, tally
from scorer.decide import Decision, decide
from scorer.extender import Extender
from scorer.kube import apply_pod
from scorer.server import ExtenderServer
from tests.nodes import shipped

CAPACITY = Capacity(gpu_slots=4, nic_slots=2)
NODES = {"vm-1": shipped("h100-vm"), "vm-2": shipped("h100-vm")}


@pytest.fixture
def server() -> ExtenderServer:
    """Not started: `answer` parses a body and dispatches it, as a POST does."""
    view = ClusterView(CAPACITY)
    for name, topo in NODES.items():
        view.set_node_object(node_object(name, topo, slots=CAPACITY.gpu_slots))
    return ExtenderServer(Extender(view, api=None), "127.0.0.1", 0, max_body=4 << 20)


def bound(server: ExtenderServer, node: str, name: str, core: int, priority: int) -> str:
    """A slice pod bound to `node`, as the watch shows it: placed against the node's tally,
    with its assignment, priority and creation time."""
    view = server.extender.view
    pod = pod_object(name, container(gpus=1, core=core, memory=2048))
    info = view.node(node)
    assert info is not None
    placed = decide(info, tally(info, (h.assignment for h in view.holders(node))), pod_ask(pod))
    assert isinstance(placed, Decision)
    pod["metadata"]["annotations"][ASSIGNMENT_ANNOTATION] = dump_assignment(placed.assignment)
    pod["spec"].update(nodeName=node, priority=priority)
    pod["status"]["phase"] = "Running"
    apply_pod(view, "ADDED", pod)
    return str(pod["metadata"]["uid"])


def preempt(server: ExtenderServer, body: dict[str, Any]) -> dict[str, Any]:
    code, answer = server.answer("preempt", json.dumps(body).encode())
    assert code == 200, answer
    assert isinstance(answer, dict)
    return answer


def test_victims_are_corrected_per_gpu_and_a_node_that_cannot_be_freed_is_dropped(
    server: ExtenderServer,
) -> None:
    low40 = bound(server, "vm-1", "low-40", 40, priority=0)
    low30 = bound(server, "vm-1", "low-30", 30, priority=0)
    bound(server, "vm-2", "high-60", 60, priority=1000)
    low20 = bound(server, "vm-2", "low-20", 20, priority=0)
    pending = pod_object("urgent", container(gpus=1, core=70, memory=2048))
    pending["spec"]["priority"] = 100
    answer = preempt(
        server,
        {
            "Pod": pending,
            "NodeNameToVictims": None,
            "NodeNameToMetaVictims": {
                # On aggregates, 30% out leaves 60% free of 100: kube-scheduler's guess.
                "vm-1": {"Pods": [{"UID": low30}], "NumPDBViolations": 0},
                # 20% out leaves 80% free, but the rest is a higher-priority pod's.
                "vm-2": {"Pods": [{"UID": low20}], "NumPDBViolations": 1},
            },
        },
    )
    assert answer == {
        "NodeNameToMetaVictims": {
            "vm-1": {"Pods": [{"UID": u} for u in sorted([low40, low30])], "NumPDBViolations": 0}
        }
    }


def test_whole_pods_from_node_name_to_victims_are_read_by_uid(server: ExtenderServer) -> None:
    """A scheduler configured without nodeCacheCapable sends whole pods."""
    low = bound(server, "vm-1", "low", 60, priority=0)
    pending = pod_object("urgent", container(gpus=1, core=50, memory=2048))
    pending["spec"]["priority"] = 5
    victim = {"metadata": {"uid": low, "name": "low", "namespace": "default"}}
    answer = preempt(
        server,
        {
            "Pod": pending,
            "NodeNameToVictims": {"vm-1": {"Pods": [victim], "NumPDBViolations": 0}},
            "NodeNameToMetaVictims": None,
        },
    )
    assert answer["NodeNameToMetaVictims"] == {
        "vm-1": {"Pods": [{"UID": low}], "NumPDBViolations": 0}
    }


def test_a_pod_without_gpulet_resources_keeps_kube_schedulers_victims(
    server: ExtenderServer,
) -> None:
    pending = pod_object("cpu-only", {"name": "main", "image": "x", "resources": {}})
    proposal = {"vm-2": {"Pods": [{"UID": "someone"}], "NumPDBViolations": 0}}
    answer = preempt(server, {"Pod": pending, "NodeNameToMetaVictims": proposal})
    assert answer == {"NodeNameToMetaVictims": proposal}


def test_an_unknown_node_is_dropped(server: ExtenderServer) -> None:
    pending = pod_object("urgent", container(gpus=1, core=10, memory=1024))
    proposal = {"cpu-node": {"Pods": [], "NumPDBViolations": 0}}
    answer = preempt(server, {"Pod": pending, "NodeNameToMetaVictims": proposal})
    assert answer == {"NodeNameToMetaVictims": {}}


def test_past_the_most_candidates_one_request_is_judged_on_the_rest_are_dropped(
    server: ExtenderServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A request naming more candidate nodes than kube-scheduler ever proposes costs no
    more than one at the cap: the first ones are judged, the rest dropped, and it is logged."""
    monkeypatch.setattr(scorer.extender, "MAX_CANDIDATES", 1)
    low = {n: bound(server, n, f"low-{n}", 60, priority=0) for n in ("vm-1", "vm-2")}
    pending = pod_object("urgent", container(gpus=1, core=50, memory=2048))
    pending["spec"]["priority"] = 5
    proposal = {n: {"Pods": [{"UID": low[n]}], "NumPDBViolations": 0} for n in ("vm-1", "vm-2")}
    answer = preempt(server, {"Pod": pending, "NodeNameToMetaVictims": proposal})
    assert answer == {"NodeNameToMetaVictims": {"vm-1": proposal["vm-1"]}}
    assert "event=preempt-candidates-capped" in caplog.text and "candidates=2" in caplog.text
