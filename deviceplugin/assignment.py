"""The pods the agent waits to allocate, and the rule that matches a kubelet Allocate call
(which names no pod) to one of them (docs/assignment.md). The annotation's format itself is
`gpulet.api.assignment`, shared with the extender that writes it.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Mapping, Sequence, Set
from dataclasses import dataclass
from typing import Protocol

from deviceplugin.resources import GPU_RESOURCE, RDMA_RESOURCE, check_resource
from gpulet.api.assignment import (
    ANNOTATION,
    VERSION,
    Assignment,
    AssignmentError,
    ContainerAssignment,
    dump_assignment,
    parse_assignment,
)
from gpulet.api.resources import (
    BATCH_CORE_RESOURCE,
    BATCH_MEMORY_RESOURCE,
    CORE_RESOURCE,
    MEMORY_RESOURCE,
)
from gpulet.api.share import GpuShare

__all__ = [
    "ANNOTATION",
    "VERSION",
    "Assignment",
    "AssignmentError",
    "ContainerAssignment",
    "ContainerRequest",
    "EntryError",
    "GpuShare",
    "MatchError",
    "PendingPod",
    "PodSource",
    "StaticPodSource",
    "check_entry",
    "dump_assignment",
    "match",
    "parse_assignment",
]


# ---- the pods the agent waits to allocate -------------------------------------------------


@dataclass(frozen=True)
class ContainerRequest:
    """What one container's resources ask (as `gpulet.placement.podspec.pod_ask` reads them).

    `core` (percent of each GPU) and `memory_mib` (MiB of each GPU) are None where the
    container does not name them: with neither, its GPUs are whole and exclusive; with
    either, each is a slice, an unnamed core being 100 and an unnamed memory the rest of the
    GPU (docs/placement.md). A `batch` container (docs/colocation.md) names both, as its
    floor and its cap.
    """

    name: str
    gpus: int = 0
    rdma: int = 0
    core: int | None = None
    memory_mib: int | None = None
    batch: bool = False

    def count(self, resource: str) -> int:
        check_resource(resource)
        return self.gpus if resource == GPU_RESOURCE else self.rdma

    @property
    def whole(self) -> bool:
        return self.core is None and self.memory_mib is None and not self.batch

    def asks(self) -> str:
        """The request as the pod spells it: `gpulet.io/gpu: 1, gpulet.io/gpu-core: 10`."""
        core, memory = (
            (BATCH_CORE_RESOURCE, BATCH_MEMORY_RESOURCE)
            if self.batch
            else (CORE_RESOURCE, MEMORY_RESOURCE)
        )
        named = (
            (GPU_RESOURCE, self.gpus or None),
            (core, self.core),
            (memory, self.memory_mib),
            (RDMA_RESOURCE, self.rdma or None),
        )
        return ", ".join(f"{r}: {v}" for r, v in named if v is not None) or "no gpulet device"


@dataclass(frozen=True)
class PendingPod:
    """A pod bound to this node that kubelet has not yet fully allocated.

    `containers` in the order kubelet allocates them: init containers first, then the
    others, each in spec order. `created` is the creation time (seconds since the epoch).
    """

    uid: str
    namespace: str
    name: str
    node: str
    created: float
    containers: tuple[ContainerRequest, ...]
    assignment_text: str | None = None
    #: Why the pod's request cannot be read (pod_ask's message): its Allocate is refused
    #: with it. `containers` then hold only the device counts, for matching.
    problem: str | None = None

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    def container(self, name: str) -> ContainerRequest | None:
        return next((c for c in self.containers if c.name == name), None)


class PodSource(Protocol):
    def pending_pods(self) -> Sequence[PendingPod]:
        """Pods bound to this node that are not yet fully allocated (a pod kubelet rejected
        or that finished must drop out promptly: see docs/assignment.md)."""
        ...

    def refresh(self) -> None:
        """Catch up with the pods' source now: kubelet may ask for a pod before the source's
        own updates have shown it (a watch lags), so a miss asks once more after this."""
        ...


class StaticPodSource:
    """Pods held in memory: for tests, and for a standalone agent fed by hand."""

    def __init__(self, pods: Iterable[PendingPod] = ()) -> None:
        self._lock = threading.Lock()
        self._pods = {p.uid: p for p in pods}

    def add(self, pod: PendingPod) -> None:
        with self._lock:
            self._pods[pod.uid] = pod

    def remove(self, uid: str) -> bool:
        with self._lock:
            return self._pods.pop(uid, None) is not None

    def pending_pods(self) -> Sequence[PendingPod]:
        with self._lock:
            return tuple(self._pods.values())

    def refresh(self) -> None:
        """Nothing to catch up with: what was added is all there is."""


# ---- matching an Allocate call to a pod ---------------------------------------------------


class MatchError(Exception):
    """The Allocate call cannot be tied to one pod for sure; refuse rather than guess."""


_GPULET = (GPU_RESOURCE, RDMA_RESOURCE)


def _current(pod: PendingPod, done: Set[tuple[str, str, str]]) -> ContainerRequest | None:
    """The first container (kubelet's order) with a gpulet resource not yet allocated."""
    for c in pod.containers:
        if any(c.count(r) and (pod.uid, c.name, r) not in done for r in _GPULET):
            return c
    return None


def _next_for(
    pod: PendingPod, resource: str, done: Set[tuple[str, str, str]]
) -> ContainerRequest | None:
    """The first container asking for `resource` that does not have it yet."""
    for c in pod.containers:
        if c.count(resource) and (pod.uid, c.name, resource) not in done:
            return c
    return None


def match(
    pods: Iterable[PendingPod],
    resource: str,
    count: int,
    done: Set[tuple[str, str, str]],
) -> tuple[PendingPod, str] | None:
    """The pod and container an Allocate of `count` devices of `resource` is for.

    Kubelet admits one pod at a time, oldest first, and allocates its containers in order,
    every resource of a container before the next container. So a candidate is a pod whose
    current container (the first with a gpulet resource still to allocate) still needs
    `resource` and asks exactly `count` of it; the answer is the oldest candidate (by
    `created`, then uid). None: no pod waits for this. `done` holds (pod uid, container,
    resource) already allocated.

    MatchError when the answer is not sure:
    - ambiguous: another candidate has the same creation time as the oldest (creation times
      have one-second resolution, and kubelet's order among equal ones is not known);
    - stale: no candidate, but a pod's next container for `resource` asks `count` while an
      earlier container still waits for another resource; kubelet would not skip it, so the
      agent's view of that pod is behind kubelet's.
    """
    check_resource(resource)
    pods = list(pods)
    candidates: list[tuple[PendingPod, str]] = []
    for pod in pods:
        current = _current(pod, done)
        if (
            current is not None
            and current.count(resource) == count
            and (pod.uid, current.name, resource) not in done
        ):
            candidates.append((pod, current.name))
    if not candidates:
        for pod in pods:
            nxt = _next_for(pod, resource, done)
            current = _current(pod, done)
            if nxt is not None and nxt.count(resource) == count and current is not None:
                raise MatchError(
                    f"pod {pod.ref} container {json.dumps(nxt.name)} asks {count} {resource}, "
                    f"but its container {json.dumps(current.name)} has not been allocated all "
                    "its devices yet: the agent's view of the pod is behind kubelet's"
                )
        return None
    candidates.sort(key=lambda pc: (pc[0].created, pc[0].uid))
    first, container = candidates[0]
    twins = [p for p, _ in candidates[1:] if p.created == first.created]
    if twins:
        names = ", ".join(p.ref for p in [first, *twins])
        raise MatchError(
            f"cannot tell which pod kubelet is admitting: {names} were created at the same "
            f"time and each waits for {count} {resource}"
        )
    return first, container


# ---- an assignment against the container's own request --------------------------------------


class EntryError(ValueError):
    """An assignment entry that gives other than its container asks, or devices this node
    does not have; the message names the field and the request."""


def check_entry(
    request: ContainerRequest,
    entry: ContainerAssignment,
    gpus: Mapping[str, int],
    nics: Set[str],
) -> None:
    """Refuse `entry` unless it gives exactly what `request` asks, on devices of this node:
    `gpus` maps each GPU it shares (UUID) to its memory in MiB, `nics` holds its RDMA ports.

    As many GPUs and ports as asked; a whole request gets every GPU exclusively, a slice
    request none: each with the core asked (100 when not named) and the memory asked (when
    not named, any up to the GPU's: the rest the extender found free).
    """
    problem = _problem(request, entry, gpus, nics)
    if problem is not None:
        raise EntryError(
            f"{ANNOTATION} does not match the container's request ({request.asks()}): {problem}"
        )


def _problem(
    request: ContainerRequest,
    entry: ContainerAssignment,
    gpus: Mapping[str, int],
    nics: Set[str],
) -> str | None:
    for field, given, asked in (
        ("gpus", len(entry.gpus), request.gpus),
        ("nics", len(entry.nics), request.rdma),
    ):
        if given != asked:
            return f'"{field}" has {given} {"entry" if given == 1 else "entries"}, not {asked}'
    for g in entry.gpus:
        memory = gpus.get(g.uuid)
        if memory is None:
            return f'"uuid" {g.uuid} is not a GPU this node shares'
        problem = _share_problem(request, g, memory)
        if problem is not None:
            return f"GPU {g.uuid} has {problem}"
    for key in entry.nics:
        if key not in nics:
            return f"NIC {key} is not an RDMA port of this node"
    return None


def _share_problem(request: ContainerRequest, g: GpuShare, memory: int) -> str | None:
    """How one assigned GPU differs from the request (`memory`: the GPU's, MiB)."""
    if request.whole:
        if not g.exclusive:
            return '"exclusive": false (a slice), but the container asks whole GPUs'
        return None  # core 100 (the parser's rule); the grant takes all the GPU's memory
    if g.exclusive:
        return '"exclusive": true (a whole GPU), but the container asks a slice'
    if g.batch != request.batch:
        kinds = ("a production slice", "a batch slice")
        return f"{kinds[g.batch]}, but the container asks {kinds[request.batch]}"
    core = 100 if request.core is None else request.core
    if g.core != core:
        unnamed = f" (the container names no {CORE_RESOURCE})" if request.core is None else ""
        return f'"core": {g.core}, not {core}{unnamed}'
    if g.memory_mib > memory:
        return f'"memory_mib": {g.memory_mib}, more than its {memory} MiB'
    if request.memory_mib is not None and g.memory_mib != request.memory_mib:
        return f'"memory_mib": {g.memory_mib}, not {request.memory_mib}'
    return None
