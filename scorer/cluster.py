"""The extender's view of the cluster: every node's topology and what is allocated on it.

Allocations come from pods bound to a node with a `gpulet.io/assignment` (fed by a watch,
or by the extender's own binds in standalone mode), plus *assumed* ones: decisions made at
bind time whose pod the watch has not yet shown bound. An assumption counts until the pod
shows up bound (it then counts as that), it is forgotten (the bind failed), or it expires.
So two pods decided back to back never get the same slice.

A node's topology is its NodeTopology (`nodetopologies.gpulet.io`) when there is one owned by
its Node, else the previous release's `gpulet.io/topology` annotation (an agent not yet
upgraded). A NodeTopology counts only while its Node exists with the uid it names as owner: one
left from an earlier Node of the same name, or naming another node's, has no effect.

A node whose agent has stopped reporting is shown with a problem, so nothing new is placed on
a node nobody serves: its heartbeat Lease's `renewTime` unchanged for the Lease's
`leaseDurationSeconds`; with a NodeTopology but no Lease, `LEASE_DURATION_S` since it was seen
so; with neither (an old agent), its `gpulet.io/heartbeat` unchanged for longer than
`stale_after`. Liveness is judged by when the extender saw the renewal change, not by the
clock of the node that wrote it; only a renewal seen for the first time is aged by its stamp.

Everything here is in memory and thread-safe; feeding it from the API is `scorer.kube`.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace

from gpulet.api import nodetopology as nt
from gpulet.api.assignment import Assignment, AssignmentError, parse_assignment
from gpulet.api.resources import HEARTBEAT_ANNOTATION, TOPOLOGY_ANNOTATION
from gpulet.api.share import IDLE, GpuUsage, Idle
from gpulet.api.stamps import epoch
from gpulet.placement import Capacity, NodeState, Placer
from gpulet.topology import Topology
from gpulet.topology.document import DocumentError, from_document, loads

log = logging.getLogger("gpulet.scorer")

#: How long a decision counts without its pod showing up bound.
ASSUME_TTL_S = 120.0
#: How long a node's heartbeat annotation may stay unchanged: three of the previous agent's
#: default 60 s; also the limit for a Lease that gives no `leaseDurationSeconds`.
STALE_HEARTBEAT_S = 180.0
#: The bounds a Lease's `leaseDurationSeconds` is held to.
LEASE_DURATION_BOUNDS = (1.0, 3600.0)


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
    #: What its agent last measured each GPU's production leaving idle (its NodeTopology's
    #: status): what batch slices are placed against.
    idle: Mapping[int, Idle] = field(default_factory=dict)


@dataclass
class _Published:
    """A NodeTopology as last seen: the uid of the Node it names as owner, a digest of its
    spec (to tell a change without keeping the document), what it reads as, and the room its
    status gives each GPU for batch slices."""

    owner: str | None
    digest: bytes
    topo: Topology | None
    problem: str | None
    idle: Mapping[int, Idle]
    #: Whether it was logged as an orphan.
    warned: bool = False


@dataclass
class _Lease:
    """A heartbeat Lease as last seen."""

    ref: str  # namespace/name, for the problem text
    renewed: str | None  # its renewTime as written
    duration: float | None  # leaseDurationSeconds, within bounds (None: none given)
    heard: float  # the monotonic time `renewed` was written, as far as the extender can tell


#: What a node's info was read from: ("object", digest), ("annotation", text), or None.
_Source = tuple[str, bytes | str] | None


@dataclass
class _Node:
    info: NodeInfo
    #: Its Node's uid, which its NodeTopology must name as owner.
    uid: str | None
    #: Its `gpulet.io/topology` annotation (None: none).
    annotation: str | None
    #: What `info` was read from, so that an unchanged node is not parsed again (`_UNREAD`
    #: until it is first read).
    source: _Source | object
    pods: set[str] = field(default_factory=set)
    generation: int = 0
    state: NodeState | None = None  # cached for `generation`
    #: The `gpulet.io/heartbeat` last seen (None: the node has none, so it is not judged)
    #: and the monotonic time it was written, as far as the extender can tell.
    heartbeat: str | None = None
    heard: float = 0.0
    #: Its heartbeat Lease, and (with a NodeTopology but no Lease) since when it has none.
    lease: _Lease | None = None
    unleased_since: float | None = None


_UNREAD = object()


@dataclass(frozen=True)
class _Pod:
    node: str
    assignment: Assignment
    #: monotonic deadline for an assumed pod; None once the API shows it bound.
    assumed_until: float | None
    #: Its spec.priority and creation time (epoch seconds), for preemption.
    priority: int = 0
    created: float = 0.0


@dataclass(frozen=True)
class Holder:
    """A pod that holds devices on a node, as preemption weighs it."""

    uid: str
    assignment: Assignment
    priority: int
    #: Creation time, epoch seconds (newer is larger).
    created: float
    #: Not yet shown bound by the API (an assumption): never a victim.
    assumed: bool = False


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
        `stale_after`: how long a heartbeat annotation may stay unchanged, and a Lease that
        gives no duration; 0: liveness is not judged at all."""
        self._capacity = capacity or Capacity()
        self._clock = clock
        self._wall_clock = wall_clock
        self._assume_ttl = assume_ttl
        self._stale_after = stale_after
        self._lock = threading.RLock()
        self._nodes: dict[str, _Node] = {}
        #: NodeTopology objects and heartbeat Leases by node name, whether or not the Node
        #: is known (the three watches do not keep step with one another).
        self._published: dict[str, _Published] = {}
        self._leases: dict[str, _Lease] = {}
        self._pods: dict[str, _Pod] = {}
        #: (deadline, uid) of assumptions, soonest first; stale entries are skipped.
        self._deadlines: list[tuple[float, str]] = []
        self._generation = 0
        self._shapes: dict[object, int] = {}

    # ---- nodes -------------------------------------------------------------------------

    def set_node(
        self,
        name: str,
        topology_text: str | None,
        heartbeat: str | None = None,
        *,
        uid: str | None = None,
    ) -> None:
        """The node as its API object says: its uid, and its topology and heartbeat
        annotations (None: it has none)."""
        with self._lock:
            known = self._nodes.get(name)
            if known is None:
                info = NodeInfo(name, None, None, self._capacity, "not read yet")
                known = self._nodes[name] = _Node(info, uid, topology_text, _UNREAD)
                known.pods = {uid for uid, pod in self._pods.items() if pod.node == name}
                known.lease = self._leases.get(name)
            known.uid, known.annotation = uid, topology_text
            self._refresh(name, known)
            if heartbeat is not None and heartbeat != known.heartbeat:
                known.heard = self._heard(heartbeat, first=known.heartbeat is None)
            known.heartbeat = heartbeat

    def set_node_object(self, node: Mapping[str, object]) -> str:
        """`set_node` from a v1.Node as JSON; its name."""
        meta = node.get("metadata")
        if not isinstance(meta, Mapping) or not isinstance(meta.get("name"), str):
            raise ValueError("a Node has no metadata.name")
        annotations = meta.get("annotations")
        if not isinstance(annotations, Mapping):
            annotations = {}
        text, beat, uid = (
            annotations.get(TOPOLOGY_ANNOTATION),
            annotations.get(HEARTBEAT_ANNOTATION),
            meta.get("uid"),
        )
        name = str(meta["name"])
        self.set_node(
            name,
            text if isinstance(text, str) else None,
            beat if isinstance(beat, str) else None,
            uid=uid if isinstance(uid, str) and uid else None,
        )
        return name

    def remove_node(self, name: str) -> None:
        """The Node is gone: the node is unknown, whatever NodeTopology or Lease is left."""
        with self._lock:
            self._nodes.pop(name, None)

    def set_node_topology_object(self, obj: Mapping[str, object]) -> str | None:
        """A NodeTopology as JSON; the node it is named after (None: it has no name). Its
        spec is read only when it or the owner changed (a spec that cannot be read gives the
        node a problem); a status alone that changed (the room its agent measured for batch
        slices, at most once a minute) moves only the node's `idle`."""
        name = _name_of(obj)
        if name is None:
            return None
        owner = nt.owner_uid(obj)
        spec = json.dumps(obj.get("spec"), sort_keys=True, default=str).encode()
        digest = hashlib.blake2b(spec, digest_size=16).digest()
        try:
            idle = nt.idle_of(obj)
        except ValueError as e:  # the node is still good for production slices
            log.warning("event=nodetopology-status-unreadable node=%s error=%r", name, str(e))
            idle = {}
        with self._lock:
            old = self._published.get(name)
            if old is not None and (old.digest, old.owner) == (digest, owner):
                if old.idle != idle:
                    old.idle = idle
                    known = self._nodes.get(name)
                    if known is not None and known.source == ("object", digest):
                        known.info = replace(known.info, idle=idle)
                        self._touch(name)
                return name
        try:
            topo, problem = from_document(nt.document_of(obj)), None
        except (DocumentError, ValueError) as e:
            topo, problem = None, f"its NodeTopology {name} cannot be read: {e}"
        with self._lock:
            self._published[name] = _Published(owner, digest, topo, problem, idle)
            if (known := self._nodes.get(name)) is not None:
                self._refresh(name, known)
        return name

    def remove_node_topology(self, name: str) -> None:
        with self._lock:
            if self._published.pop(name, None) is not None and name in self._nodes:
                self._refresh(name, self._nodes[name])

    def node_topology_names(self) -> list[str]:
        """The NodeTopology objects held, orphans included."""
        with self._lock:
            return list(self._published)

    def set_lease_object(self, obj: Mapping[str, object]) -> str | None:
        """A Lease as JSON; the node whose heartbeat it is (None: not a heartbeat Lease, by
        its name, and ignored)."""
        name = _name_of(obj)
        node = None if name is None else nt.node_of_lease(name)
        if name is None or node is None:
            return None
        meta, spec = obj.get("metadata"), obj.get("spec")
        namespace = meta.get("namespace") if isinstance(meta, Mapping) else None
        spec = spec if isinstance(spec, Mapping) else {}
        renewed = spec.get("renewTime") if isinstance(spec.get("renewTime"), str) else None
        duration = _lease_duration(spec.get("leaseDurationSeconds"))
        with self._lock:
            lease = self._leases.get(node)
            if lease is None:
                heard = self._heard(renewed, first=True)
                lease = self._leases[node] = _Lease(f"{namespace}/{name}", renewed, duration, heard)
                if (known := self._nodes.get(node)) is not None:
                    known.lease = lease
                    self._refresh(node, known)
            elif renewed != lease.renewed:
                lease.renewed, lease.heard = renewed, self._clock()
            lease.duration = duration
        return node

    def remove_lease(self, node: str) -> None:
        """`node`'s heartbeat Lease is gone."""
        with self._lock:
            if self._leases.pop(node, None) is not None and (known := self._nodes.get(node)):
                known.lease = None
                self._refresh(node, known)

    def lease_nodes(self) -> list[str]:
        """The nodes whose heartbeat Lease is held."""
        with self._lock:
            return list(self._leases)

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

    def _refresh(self, name: str, known: _Node) -> None:
        """Read the node again from its sources, if they changed (the lock is held)."""
        published = self._published.get(name)
        if published is not None and not (known.uid and published.owner == known.uid):
            if not published.warned:
                published.warned = True
                log.warning(
                    "event=nodetopology-orphan node=%s owner_uid=%s node_uid=%s",
                    name,
                    published.owner,
                    known.uid,
                )
            published = None
        source: _Source = None
        if published is not None:
            source = ("object", published.digest)
        elif known.annotation is not None:
            source = ("annotation", known.annotation)
        if source != known.source:
            known.info, known.source = self._info_of(name, published, known.annotation), source
            self._touch(name)
        if published is None or known.lease is not None:
            known.unleased_since = None
        elif known.unleased_since is None:
            known.unleased_since = self._clock()

    def _heard(self, stamp: str | None, *, first: bool) -> float:
        """When a renewal stamped `stamp` was written, by the monotonic clock: now, but as
        old as its stamp says when it is the first seen."""
        age = _age(stamp, self._wall_clock()) if first and stamp is not None else 0.0
        return self._clock() - age

    def _judged(self, known: _Node, now: float) -> tuple[NodeInfo, int]:
        """(info, generation), or the node marked quiet when its agent stopped reporting."""
        if not self._stale_after:
            return known.info, known.generation
        lease = known.lease
        if lease is not None:
            since, limit = lease.heard, lease.duration or self._stale_after
        elif known.unleased_since is not None:
            since, limit = known.unleased_since, float(nt.LEASE_DURATION_S)
        elif known.heartbeat is not None:
            since, limit = known.heard, self._stale_after
        else:
            return known.info, known.generation
        quiet = now - since
        if quiet <= limit:
            return known.info, known.generation
        # Quiet: only now is it worth saying why (this runs for every node of every filter).
        if lease is not None:
            last = f"its heartbeat Lease {lease.ref} last renewed {lease.renewed}"
        elif known.unleased_since is not None:
            last = (
                f"it has a NodeTopology but no heartbeat Lease {nt.LEASE_PREFIX}{known.info.name}"
            )
        else:
            last = f"last {HEARTBEAT_ANNOTATION} {known.heartbeat}"
        problem = (
            f"the gpulet agent on this node has not reported for {quiet:.0f} s ({last}; "
            f"stale after {limit:.0f} s): is its DaemonSet pod running?"
        )
        return replace(known.info, topo=None, placer=None, problem=problem, shape=-1), -1

    def _info_of(self, name: str, published: _Published | None, text: str | None) -> NodeInfo:
        """The node as its NodeTopology says, else as its annotation does."""
        if published is not None:
            info = self._node_info(name, published.topo, published.problem)
            return replace(info, idle=published.idle) if published.idle else info
        if text is None:
            problem = (
                f"node has no NodeTopology ({nt.CRD_NAME}) and no {TOPOLOGY_ANNOTATION} "
                "annotation (is the gpulet agent running?)"
            )
            return self._node_info(name, None, problem)
        try:
            return self._node_info(name, loads(text), None)
        except (DocumentError, ValueError) as e:
            problem = f"its {TOPOLOGY_ANNOTATION} annotation cannot be read: {e}"
            return self._node_info(name, None, problem)

    def _node_info(self, name: str, topo: Topology | None, problem: str | None) -> NodeInfo:
        if topo is None:
            return NodeInfo(name, None, None, self._capacity, problem)
        hardware = (
            tuple((g.index, g.memory_mib, g.mig, g.numa, g.location) for g in topo.gpus),
            tuple((n.key, n.active, n.numa, n.location) for n in topo.nics),
        )
        shape = self._shapes.setdefault(hardware, len(self._shapes))
        return NodeInfo(name, topo, Placer(topo, self._capacity), self._capacity, None, shape)

    # ---- pods --------------------------------------------------------------------------

    def set_pod(
        self,
        uid: str,
        node: str | None,
        assignment_text: str | None,
        *,
        priority: int = 0,
        created: float = 0.0,
    ) -> None:
        """A pod as the API shows it: bound to `node` (None: not yet) with this assignment
        (None: none), its priority and creation time. A bound pod with a readable assignment
        for its node counts; anything else does not (an assumption for a pod not yet bound is
        kept)."""
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
            self._put(uid, _Pod(node, assignment, None, priority, created))

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

    def holders(self, name: str) -> list[Holder]:
        """The pods that count on node `name`."""
        with self._lock:
            self._expire()
            known = self._nodes.get(name)
            pods = [(uid, self._pods[uid]) for uid in (known.pods if known else ())]
        return [
            Holder(uid, p.assignment, p.priority, p.created, p.assumed_until is not None)
            for uid, p in pods
        ]

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
        return tally(known.info, (self._pods[uid].assignment for uid in known.pods))


def tally(info: NodeInfo, assignments: Iterable[Assignment]) -> NodeState:
    """What `assignments` take of the node's GPUs and NIC ports, as the placement engine
    counts it (an assignment's GPU the node no longer has is not counted), with what its
    agent measured idle."""
    return total(charges(info, assignments), info.idle)


@dataclass(frozen=True)
class Charges:
    """What one assignment takes of a node: a charge per GPU it holds (by index), and one
    slot per NIC port it holds (a key once per container)."""

    gpus: tuple[tuple[int, GpuUsage], ...]
    nics: tuple[str, ...]


def charges(info: NodeInfo, assignments: Iterable[Assignment]) -> Iterator[Charges]:
    """Each assignment's charges on the node, in order: what `tally` adds up."""
    topo = info.topo
    by_uuid = {g.uuid: g for g in topo.gpus} if topo is not None else {}
    for assignment in assignments:
        if topo is None:
            yield Charges((), ())
            continue
        gpus: list[tuple[int, GpuUsage]] = []
        nics: list[str] = []
        for container in assignment.containers:
            for share in container.gpus:
                gpu = by_uuid.get(share.uuid)
                if gpu is None:
                    continue  # the node's GPUs changed under the pod: nothing to count
                gpus.append((gpu.index, share.charge(info.capacity.gpu_slots, gpu.memory_mib)))
            nics.extend(container.nics)
        yield Charges(tuple(gpus), tuple(nics))


def total(taken: Iterable[Charges], idle: Mapping[int, Idle] | None = None) -> NodeState:
    """The node's state with these charges on it (and `idle`, what batch is placed against)."""
    gpus: dict[int, GpuUsage] = {}
    nics: dict[str, int] = {}
    for t in taken:
        for index, charge in t.gpus:
            gpus[index] = gpus.get(index, IDLE).plus(charge)
        for key in t.nics:
            nics[key] = nics.get(key, 0) + 1
    return NodeState(gpus=gpus, nic_slots=nics, idle=idle or {})


def _name_of(obj: Mapping[str, object]) -> str | None:
    meta = obj.get("metadata")
    name = meta.get("name") if isinstance(meta, Mapping) else None
    return name if isinstance(name, str) and name else None


def _lease_duration(value: object) -> float | None:
    """A Lease's `leaseDurationSeconds` within `LEASE_DURATION_BOUNDS` (None: none, or not a
    number)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    low, high = LEASE_DURATION_BOUNDS
    return min(high, max(low, float(value)))


def _age(stamp: str, now: float) -> float:
    """Seconds since a stamp, as far as this host's clock says (0 when the stamp cannot be
    read or lies in the future)."""
    written = epoch(stamp)
    return 0.0 if written is None else max(0.0, now - written)
