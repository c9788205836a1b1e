"""For one pod and one node: the assignment it would get and how good it is, or why it does
not fit. Pure over a `NodeInfo` and a `NodeState`.

A pod's containers are placed one after another in kubelet's order, each against what the
node has plus what the containers before it took; the pod's score is the mean of theirs.
Init containers count like the others for the pod's whole life: the extender does not know
when they end, and counting them is the safe side.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from gpulet.api.assignment import Assignment, ContainerAssignment
from gpulet.api.share import Idle
from gpulet.placement import NodeState, Placement
from gpulet.placement.podspec import PodAsk
from scorer.cluster import NodeInfo

#: kube-scheduler's extender scores: MinExtenderPriority .. MaxExtenderPriority.
MAX_SCORE = 10


@dataclass(frozen=True)
class Decision:
    assignment: Assignment
    #: 0-100, higher is better (the placement engine's quality figure).
    quality: float

    @property
    def score(self) -> int:
        """The extender's 0-10."""
        return max(0, min(MAX_SCORE, round(self.quality * MAX_SCORE / 100)))


@dataclass(frozen=True)
class Refusal:
    """Why the pod does not fit the node, in words a person can act on."""

    reason: str


def decide(node: NodeInfo, state: NodeState, ask: PodAsk) -> Decision | Refusal:
    if node.placer is None or node.topo is None:
        return Refusal(node.problem or "node has no usable topology")
    wants = ask.wants
    containers: list[ContainerAssignment] = []
    qualities: list[float] = []
    for n, container in enumerate(wants):
        request = container.request
        assert request is not None
        placed = node.placer.place(request, state)
        if not isinstance(placed, Placement):
            who = f"container {container.name}: " if len(wants) > 1 else ""
            return Refusal(f"{who}{placed.reason}")
        containers.append(
            ContainerAssignment(
                container.name,
                # The annotation names each GPU by UUID alone.
                gpus=tuple(g.by_uuid() for g in placed.gpus),
                nics=placed.nics,
                numa=placed.numa,
            )
        )
        qualities.append(placed.score)
        if n + 1 < len(wants):
            state = _after(state, placed, node.capacity.gpu_slots)
    quality = sum(qualities) / len(qualities) if qualities else 100.0
    return Decision(Assignment(node.name, tuple(containers)), round(quality, 2))


def _after(state: NodeState, placed: Placement, slots_per_gpu: int) -> NodeState:
    """`state` plus what `placed` takes."""
    gpus = dict(state.gpus)
    for g in placed.gpus:
        gpus[g.index] = state.gpu(g.index).plus(g.charge(slots_per_gpu))
    nics = dict(state.nic_slots)
    for key in placed.nics:
        nics[key] = nics.get(key, 0) + 1
    return replace(state, gpus=gpus, nic_slots=nics)


def empty(node: NodeInfo) -> NodeState:
    """The node with nothing on it: every GPU idle, for batch slices too."""
    topo = node.topo
    gpus = topo.gpus if topo is not None else ()
    return NodeState(idle={g.index: Idle(100, g.memory_mib) for g in gpus})
