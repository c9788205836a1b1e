"""The extender's view of the cluster: every node's topology and what is allocated on it.

Allocations come from pods bound to a node with a `gpulet.io/assignment` (fed by a watch,
or by the extender's own binds in standalone mode), plus *assumed* ones: decisions made at
bind time whose pod the watch has not yet shown bound. An assumption counts until the pod
shows up bound (it then counts as that), it is forgotten (the bind failed), or it expires.
So two pods decided back to back never get the same slice.

A node whose agent has stopped reporting (its `gpulet.io/heartbeat` unchanged for longer than
`stale_after`) is shown with a problem, so nothing new is placed on a node nobody serves.
Liveness is judged by when the extender saw the heartbeat change, not by the clock of the
node that wrote it; only a node seen for the first time is aged by its stamp.

Everything here is in memory and thread-safe; feeding it from the API is `scorer.kube`.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace

from gpulet.api.assignment import Assignment, AssignmentError, parse_assignment
from gpulet.api.resources import HEARTBEAT_ANNOTATION, TOPOLOGY_ANNOTATION
from gpulet.api.share import IDLE, GpuUsage
from gpulet.api.stamps import epoch
from gpulet.placement import Capacity, NodeState, Placer
from gpulet.topology import Topology
from gpulet.topology.document import DocumentError, loads

log = logging.getLogger("gpulet.scorer")

#: How long a decision counts without its pod showing up bound.
ASSUME_TTL_S = 120.0
#: How long a node's heartbeat may stay unchanged: three of the agent's default 60 s.
STALE_HEARTBEAT_S = 180.0


@dataclass(frozen=True)
class NodeInfo:
    """One node as the extender sees it. `problem` says why it cannot take gpulet pods
    (then `topo` and `placer` are None)."""

    name: str
    topo: Topology | None
    placer: Placer | None
    capacity: Capacity
    problem: str | None = None
    #: What decides whether a request fits the node empty (devices, memory, NUMA, PCIe
    #: placement, port state; not UUIDs), as a number: nodes of one hardware model share it.
    shape: int = -1


@dataclass
class _Node:
    info: NodeInfo
    #: The annotation it was read from, so that an unchanged node is not parsed again.
    source: str | None
    pods: set[str] = field(default_factory=set)
    generation: int = 0
    state: NodeState | None = None  # cached for `generation`
    #: The `gpulet.io/heartbeat` last seen (None: the node has none, so it is not judged)
    #: and the monotonic time it was written, as far as the extender can tell.
    heartbeat: str | None = None
    heard: float = 0.0


@dataclass(frozen=True)
class _Pod:
    node: str
    assignment: Assignment
    #: monotonic deadline for an assumed pod; None once the API shows it bound.
    assumed_until: float | None


class ClusterView:
    def __init__(
        self,
        capacity: Capacity | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        assume_ttl: float = ASSUME_TTL_S,
        stale_after: float = STALE_HEARTBEAT_S,
    ) -> None:
        """`capacity`: slots per GPU and per RDMA port, as the agents advertise them (their
        `--gpu-slots` and `--rdma-slots`; one setting for the cluster, in the Helm values).
        `stale_after` 0: heartbeats are not judged."""
        self._capacity = capacity or Capacity()
        self._clock = clock
        self._wall_clock = wall_clock
        self._assume_ttl = assume_ttl
        self._stale_after = stale_after
        self._lock = threading.RLock()
        self._nodes: dict[str, _Node] = {}
        self._pods: dict[str, _Pod] = {}
        #: (deadline, uid) of assumptions, soonest first; stale entries are skipped.
        self._deadlines: list[tuple[float, str]] = []
        self._generation = 0
        self._shapes: dict[object, int] = {}

    # ---- nodes -------------------------------------------------------------------------

    def set_node(self, name: str, topology_text: str | None, heartbeat: str | None = None) -> None:
        """The node as its API object says: its topology and heartbeat annotations (None: it
        has none)."""
        with self._lock:
            known = self._nodes.get(name)
            if known is None:
                known = self._nodes[name] = _Node(
                    self._node_info(name, topology_text), topology_text
                )
                known.pods = {uid for uid, pod in self._pods.items() if pod.node == name}
                self._touch(name)
            elif known.source != topology_text:
                known.info, known.source = self._node_info(name, topology_text), topology_text
                self._touch(name)
            if heartbeat is not None and heartbeat != known.heartbeat:
                # Seen change now; seen first: as old as its stamp says.
                first = known.heartbeat is None
                age = _age(heartbeat, self._wall_clock()) if first else 0.0
                known.heard = self._clock() - age
            known.heartbeat = heartbeat

    def set_node_object(self, node: Mapping[str, object]) -> str:
        """`set_node` from a v1.Node as JSON; its name."""
        meta = node.get("metadata")
        if not isinstance(meta, Mapping) or not isinstance(meta.get("name"), str):
            raise ValueError("a Node has no metadata.name")
        annotations = meta.get("annotations")
        if not isinstance(annotations, Mapping):
            annotations = {}
        text, beat = (annotations.get(k) for k in (TOPOLOGY_ANNOTATION, HEARTBEAT_ANNOTATION))
        name = str(meta["name"])
        self.set_node(
            name, text if isinstance(text, str) else None, beat if isinstance(beat, str) else None
        )
        return name

    def remove_node(self, name: str) -> None:
        with self._lock:
            self._nodes.pop(name, None)

    def node(self, name: str) -> NodeInfo | None:
        with self._lock:
            known = self._nodes.get(name)
            return None if known is None else self._judged(known, self._clock())[0]

    def node_names(self) -> list[str]:
        with self._lock:
            return list(self._nodes)

    def quiet_nodes(self) -> list[str]:
        """The nodes whose agent has stopped reporting (stale heartbeat)."""
        with self._lock:
            now = self._clock()
            return [n for n, known in self._nodes.items() if self._judged(known, now)[1] < 0]

    def nodes(self, names: list[str]) -> list[tuple[NodeInfo | None, int]]:
        """(info, generation) of each of `names`, read at once. An unknown node is (None, -1);
        a node whose agent went quiet has a problem and generation -1 (its verdict changes
        with time alone, so it must not be kept)."""
        with self._lock:
            self._expire()
            unknown = (None, -1)
            found, now, judged = self._nodes, self._clock(), self._judged
            return [judged(known, now) if (known := found.get(n)) else unknown for n in names]

    def state(self, name: str) -> NodeState:
        """What is allocated on the node, for the placement engine."""
        with self._lock:
            self._expire()
            known = self._nodes.get(name)
            if known is None:
                return NodeState()
            if known.state is None:
                known.state = self._tally(known)
            return known.state

    def _judged(self, known: _Node, now: float) -> tuple[NodeInfo, int]:
        """(info, generation), or the node marked quiet when its heartbeat is stale."""
        if not self._stale_after or known.heartbeat is None:
            return known.info, known.generation
        quiet = now - known.heard
        if quiet <= self._stale_after:
            return known.info, known.generation
        problem = (
            f"the gpulet agent on this node has not reported for {quiet:.0f} s (last "
            f"{HEARTBEAT_ANNOTATION} {known.heartbeat}; stale after {self._stale_after:.0f} s): "
            "is its DaemonSet pod running?"
        )
        return replace(known.info, topo=None, placer=None, problem=problem, shape=-1), -1

    def _node_info(self, name: str, text: str | None) -> NodeInfo:
        if text is None:
            problem = f"node has no {TOPOLOGY_ANNOTATION} annotation (is the gpulet agent running?)"
            return NodeInfo(name, None, None, self._capacity, problem)
        try:
            topo = loads(text)
        except (DocumentError, ValueError) as e:
            problem = f"its {TOPOLOGY_ANNOTATION} annotation cannot be read: {e}"
            return NodeInfo(name, None, None, self._capacity, problem)
        hardware = (
            tuple((g.index, g.memory_mib, g.mig, g.numa, g.location) for g in topo.gpus),
            tuple((n.key, n.active, n.numa, n.location) for n in topo.nics),
        )
        shape = self._shapes.setdefault(hardware, len(self._shapes))
        return NodeInfo(name, topo, Placer(topo, self._capacity), self._capacity, None, shape)

    # ---- pods --------------------------------------------------------------------------

    def set_pod(self, uid: str, node: str | None, assignment_text: str | None) -> None:
        """A pod as the API shows it: bound to `node` (None: not yet) with this assignment
        (None: none). A bound pod with a readable assignment for its node counts; anything
        else does not (an assumption for a pod not yet bound is kept)."""
        with self._lock:
            if node is None:
                known = self._pods.get(uid)
                if known is not None and known.assumed_until is None:
                    self._drop(uid)
                return
            assignment = None
            if assignment_text is not None:
                try:
                    assignment = parse_assignment(assignment_text)
                except AssignmentError as e:
                    log.warning("event=bad-assignment pod_uid=%s reason=%r", uid, str(e))
            if assignment is None or assignment.node != node:
                self._drop(uid)
                return
            self._put(uid, _Pod(node, assignment, None))

    def remove_pod(self, uid: str) -> None:
        """The pod is gone, or finished: its devices are free."""
        with self._lock:
            self._drop(uid)

    def assume(self, uid: str, assignment: Assignment) -> None:
        """Count a decision before the API shows its pod bound."""
        with self._lock:
            known = self._pods.get(uid)
            if known is not None and known.assumed_until is None:
                return  # already bound: the API's word stands
            deadline = self._clock() + self._assume_ttl
            self._put(uid, _Pod(assignment.node, assignment, deadline))
            heapq.heappush(self._deadlines, (deadline, uid))

    def forget(self, uid: str) -> None:
        """Drop an assumption (its bind failed); a bound pod is left alone."""
        with self._lock:
            known = self._pods.get(uid)
            if known is not None and known.assumed_until is not None:
                self._drop(uid)

    def assignment(self, uid: str) -> Assignment | None:
        with self._lock:
            known = self._pods.get(uid)
            return None if known is None else known.assignment

    def pods(self) -> Iterator[tuple[str, str, bool]]:
        """(uid, node, assumed) of every pod that counts."""
        with self._lock:
            self._expire()
            items = [(u, p.node, p.assumed_until is not None) for u, p in self._pods.items()]
        yield from items

    def _put(self, uid: str, pod: _Pod) -> None:
        self._drop(uid)
        self._pods[uid] = pod
        known = self._nodes.get(pod.node)
        if known is not None:
            known.pods.add(uid)
            self._touch(pod.node)

    def _drop(self, uid: str) -> None:
        pod = self._pods.pop(uid, None)
        if pod is None:
            return
        known = self._nodes.get(pod.node)
        if known is not None:
            known.pods.discard(uid)
            self._touch(pod.node)

    def _expire(self) -> None:
        now = self._clock()
        while self._deadlines and self._deadlines[0][0] < now:
            deadline, uid = heapq.heappop(self._deadlines)
            pod = self._pods.get(uid)
            if pod is not None and pod.assumed_until == deadline:
                log.info("event=assumption-expired pod_uid=%s node=%s", uid, pod.node)
                self._drop(uid)

    def _touch(self, name: str) -> None:
        self._generation += 1
        known = self._nodes[name]
        known.generation = self._generation
        known.state = None

    def _tally(self, known: _Node) -> NodeState:
        topo = known.info.topo
        if topo is None:
            return NodeState()
        by_uuid = {g.uuid: g for g in topo.gpus}
        gpus: dict[int, GpuUsage] = {}
        nics: dict[str, int] = {}
        for uid in known.pods:
            for container in self._pods[uid].assignment.containers:
                for share in container.gpus:
                    gpu = by_uuid.get(share.uuid)
                    if gpu is None:
                        continue  # the node's GPUs changed under the pod: nothing to count
                    charge = share.charge(known.info.capacity.gpu_slots, gpu.memory_mib)
                    gpus[gpu.index] = gpus.get(gpu.index, IDLE).plus(charge)
                for key in container.nics:
                    nics[key] = nics.get(key, 0) + 1
        return NodeState(gpus=gpus, nic_slots=nics)


def _age(stamp: str, now: float) -> float:
    """Seconds since a stamp, as far as this host's clock says (0 when the stamp cannot be
    read or lies in the future)."""
    written = epoch(stamp)
    return 0.0 if written is None else max(0.0, now - written)
