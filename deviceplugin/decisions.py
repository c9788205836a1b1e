"""What an Allocate grants, decided without side effects: no lock, no file, no gRPC. The node's
devices (`Inventory`), their health (`Health`), what is granted (`room.Granted`) and the
pending pods (`PodSource`) in; a `Decision` out, or AllocateError saying why not.
`deviceplugin.transaction` applies a decision; `deviceplugin.core` runs both under its lock.

Two modes. With a `PodSource` (the scheduler extender is deployed), every Allocate is matched
to a pending pod (`assignment.match`) and follows that pod's `gpulet.io/assignment` exactly:
the GPUs, shares and NICs named there, whatever slot IDs kubelet picked, as long as it
gives exactly what the pod's own resources ask (`assignment.check_entry`: anyone who can
create a pod can write the annotation) and fits what is granted (`room`). Without one
(standalone), every GPU Allocate gets the physical GPUs of its device IDs, whole and
exclusively; another slot of a GPU held whole is refused, naming the GPU.

Kubelet hands out an ID again either to a later container of the same pod (an init
container's IDs) or once the container holding it is gone. In standalone mode the grant
holding it is superseded (dropped); with pods, an earlier container's grant of the same pod
is superseded as *spent* (`Decision.spend`), and any other is refused.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from deviceplugin import ids
from deviceplugin.assignment import (
    AssignmentError,
    ContainerAssignment,
    EntryError,
    MatchError,
    PendingPod,
    PodSource,
    check_entry,
    match,
    parse_assignment,
)
from deviceplugin.grants import GpuShare, Grant
from deviceplugin.inventory import Inventory
from deviceplugin.resources import GPU_RESOURCE, UnknownResourceError, check_resource
from deviceplugin.room import Granted, shortage
from gpulet.api.share import shortfall
from gpulet.topology import Nic

__all__ = ["AllocateError", "Decider", "Decision", "Granted", "Health"]

#: Pod UIDs and container names become directory names; anything else is refused.
_PATH_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")


class AllocateError(Exception):
    """An Allocate the plugin refuses; the message is what kubelet shows on the pod."""


class Health(Protocol):
    """Which devices are sick and why (`devicehealth.DeviceHealth` has these)."""

    def gpu_problem(self, index: int) -> str | None: ...

    def port_problem(self, key: str) -> str | None: ...


@dataclass(frozen=True)
class Decision:
    """What one Allocate grants: the grant to record, less its region and time."""

    resource: str
    device_ids: tuple[str, ...]
    gpus: tuple[GpuShare, ...]
    nics: tuple[str, ...]
    pod_uid: str | None
    container: str | None
    #: Grants holding the requested IDs, to drop; `spend`: keep them as spent.
    superseded: tuple[Grant, ...]
    spend: bool


class Decider:
    """The decisions for one node, reading its devices, their health, its grants and pods."""

    def __init__(
        self, inventory: Inventory, health: Health, granted: Granted, pods: PodSource | None
    ) -> None:
        self._inventory = inventory
        self._health = health
        self._granted = granted
        self._pods = pods

    def decide(self, resource: str, device_ids: Sequence[str]) -> Decision:
        """What kubelet's Allocate of `device_ids` (one container's) grants."""
        try:
            check_resource(resource)
        except UnknownResourceError as e:
            raise AllocateError(str(e)) from None
        owners = self.validate(resource, device_ids)
        if self._pods is None:
            return self.standalone(resource, device_ids, owners)
        return self.assigned(resource, device_ids)

    def validate(self, resource: str, device_ids: Sequence[str]) -> list[str]:
        """The owner of each ID; AllocateError for an ID that is unknown or unhealthy."""
        if not device_ids:
            raise AllocateError(f"kubelet asked for no {resource} device")
        if len(set(device_ids)) != len(device_ids):
            raise AllocateError(f"kubelet listed a {resource} device ID twice: {device_ids}")
        node, limit = self._inventory.node, self._inventory.config.slots(resource)
        owners: list[str] = []
        for device in device_ids:
            try:
                owner, slot = ids.parse(device)
            except ids.DeviceIdError as e:
                raise AllocateError(f"unknown device ID {device!r}: {e}") from None
            if resource == GPU_RESOURCE:
                gpu = self._inventory.gpus.get(owner)
                if gpu is None:
                    raise AllocateError(
                        f"unknown device ID {device!r}: node {node} has no GPU {owner} that it "
                        "shares"
                    )
                what, sick = f"GPU{gpu.index} ({gpu.uuid})", self._health.gpu_problem(gpu.index)
            else:
                nic = self._inventory.nics.get(owner)
                if nic is None:
                    raise AllocateError(
                        f"unknown device ID {device!r}: node {node} has no RDMA port {owner}"
                    )
                what, sick = f"RDMA port {nic.key}", self._health.port_problem(nic.key)
            if slot >= limit:
                raise AllocateError(
                    f"unknown device ID {device!r}: {what} has {limit} slots (00..{limit - 1:02d})"
                )
            if sick is not None:
                raise AllocateError(
                    f"device ID {device!r} is on {what}, which is unhealthy ({sick})"
                )
            owners.append(owner)
        return owners

    def standalone(
        self, resource: str, device_ids: Sequence[str], owners: Sequence[str]
    ) -> Decision:
        """The devices of the IDs themselves; each GPU whole. Each unit is a different
        device, so two slots of one device are refused."""
        unit = "GPU" if resource == GPU_RESOURCE else "RDMA port"
        seen: dict[str, str] = {}
        for device, owner in zip(device_ids, owners, strict=True):
            if owner in seen:
                raise AllocateError(
                    f"device IDs {seen[owner]!r} and {device!r} are slots of the same {unit} "
                    f"{owner}; each {resource} is a different {unit} (kubelet picks such IDs "
                    f"itself when fewer than {len(device_ids)} {unit}s are free)"
                )
            seen[owner] = device
        topo, ask = self._inventory.topo, tuple(device_ids)
        superseded = tuple(self._granted.holders(resource, device_ids))
        if resource != GPU_RESOURCE:
            keys = tuple(n.key for n in topo.nics if n.key in seen)
            return Decision(resource, ask, (), keys, None, None, superseded, spend=False)
        config = self._inventory.config
        state = self._granted.node_state(topo, config, excluding=superseded)
        gpus = sorted((self._inventory.gpus[o] for o in seen), key=lambda g: g.index)
        shares = tuple(GpuShare.held_whole(g.uuid, g.memory_mib, g.index) for g in gpus)
        for gpu, share in zip(gpus, shares, strict=True):
            use = state.gpu(gpu.index)
            if shortfall(use, share, config.gpu_slots, gpu.memory_mib) is not None:
                raise AllocateError(
                    f"GPU{gpu.index} ({gpu.uuid}) is held whole by another container; kubelet "
                    f"offered its slot {seen[gpu.uuid]} because it counts slots, not GPUs. "
                    f"Fewer than {len(gpus)} whole GPUs are free on node {topo.node}"
                )
        return Decision(resource, ask, shares, (), None, None, superseded, spend=False)

    def assigned(self, resource: str, device_ids: Sequence[str]) -> Decision:
        """What the pending pod's assignment gives the container kubelet allocates."""
        # The match asks as many devices as kubelet allocates, and the entry gives as many.
        pod, name = self._match(resource, len(device_ids))
        entry = self._entry(pod, name)
        where = f"pod {pod.ref} container {name!r}"
        for part in (pod.uid, name):
            if not _PATH_PART.fullmatch(part) or part in {".", ".."}:
                raise AllocateError(f"{where}: {part!r} cannot name a directory")
        gpus: tuple[GpuShare, ...] = ()
        nics: tuple[str, ...] = ()
        if resource == GPU_RESOURCE:
            gpus = tuple(self._share(where, a) for a in entry.gpus)
        else:
            nics = tuple(self._port(where, key).key for key in entry.nics)
        superseded = tuple(self._granted.holders(resource, device_ids))
        for old in superseded:
            if old.pod_uid != pod.uid:
                raise AllocateError(
                    f"device ID of {where} is still granted to pod {old.pod_uid} container "
                    f"{old.container!r} in the agent's ledger; kubelet hands it out again, so "
                    "that container is gone, but the agent has not seen it end yet"
                )
        # What an earlier container of the pod holds stays counted (it is spent, not freed):
        # the extender placed this container against it too.
        problem = shortage(self._inventory, self._granted, gpus, nics)
        if problem is not None:
            raise AllocateError(f"{where}: {problem}")
        ask = tuple(device_ids)
        return Decision(resource, ask, gpus, nics, pod.uid, name, superseded, spend=True)

    def assigned_devices(self, resource: str, size: int) -> list[str] | None:
        """The devices (GPU UUIDs or port keys) the pending pod's assignment names for the
        next Allocate of `size`, or None when there is no sure match (then Allocate will say
        why)."""
        try:
            pod, name = self._match(resource, size)
            entry = self._entry(pod, name)
        except AllocateError:
            return None
        if resource == GPU_RESOURCE:
            return [g.uuid for g in entry.gpus]
        return list(entry.nics)

    def _match(self, resource: str, count: int) -> tuple[PendingPod, str]:
        pods = self._pods
        assert pods is not None
        done = {
            (g.pod_uid, g.container, g.resource)
            for g in self._granted.grants()
            if g.pod_uid is not None and g.container is not None
        }
        try:
            found = match(pods.pending_pods(), resource, count, done)
            if found is None:  # kubelet's watch may be ahead of ours: ask the source again
                pods.refresh()
                found = match(pods.pending_pods(), resource, count, done)
        except MatchError as e:
            raise AllocateError(str(e)) from None
        if found is None:
            raise AllocateError(
                f"no pod bound to node {self._inventory.config.node_name} waits for {count} "
                f"{resource}: the agent has not seen the pod yet, or it was scheduled without "
                "the gpulet scheduler extender"
            )
        return found

    def _entry(self, pod: PendingPod, name: str) -> ContainerAssignment:
        """The pod's assignment for container `name`, checked against this node and against
        what the container itself asks (`check_entry`): the annotation is the pod owner's to
        write, so it is trusted no further than the pod's own request."""
        if pod.problem is not None:
            raise AllocateError(pod.problem)
        request = pod.container(name)
        if request is None:
            raise AllocateError(f"pod {pod.ref} has no container {name!r}")
        if pod.assignment_text is None:
            raise AllocateError(
                f"pod {pod.ref} has no gpulet.io/assignment annotation: it was not scheduled "
                "through the gpulet scheduler extender"
            )
        try:
            assignment = parse_assignment(pod.assignment_text)
        except AssignmentError as e:
            raise AllocateError(f"pod {pod.ref}: {e}") from None
        node = self._inventory.config.node_name
        if assignment.node != node:
            raise AllocateError(
                f"pod {pod.ref}'s gpulet.io/assignment is for node {assignment.node!r}, but "
                f"this is node {node!r}"
            )
        entry = assignment.container(name)
        if entry is None:
            raise AllocateError(
                f"pod {pod.ref}'s gpulet.io/assignment has nothing for container {name!r}"
            )
        try:
            check_entry(request, entry, self._inventory.gpu_memory, self._inventory.nics.keys())
        except EntryError as e:
            raise AllocateError(f"pod {pod.ref} container {name!r}: {e}") from None
        return entry

    def _share(self, where: str, assigned: GpuShare) -> GpuShare:
        """The grant of one assigned GPU (one `check_entry` passed: the GPU is shared here,
        and a slice's memory is at most the GPU's)."""
        uuid, core, memory = assigned.uuid, assigned.core, assigned.memory_mib
        gpu = self._inventory.gpus[uuid]
        sick = self._health.gpu_problem(gpu.index)
        if sick is not None:
            raise AllocateError(f"{where}: assigned GPU{gpu.index} ({uuid}) is unhealthy ({sick})")
        if not assigned.exclusive and not self._inventory.config.limiter:
            raise AllocateError(
                f"{where} gets a slice of GPU{gpu.index} ({core}% core, {memory} MiB), but this "
                "agent runs without the limiter (its library and preload file), so the slice "
                "could not be enforced"
            )
        return assigned.on_gpu(gpu.index, gpu.memory_mib)

    def _port(self, where: str, key: str) -> Nic:
        """One assigned port (one `check_entry` passed: this node has it)."""
        sick = self._health.port_problem(key)
        if sick is not None:
            raise AllocateError(f"{where}: assigned RDMA port {key} is unhealthy ({sick})")
        return self._inventory.nics[key]
