"""The device plugin's decisions, without gRPC: what to advertise, which device IDs to
prefer, what an Allocate grants, and what is released. Thread-safe (one lock).

Two modes. With a `PodSource` (the scheduler extender is deployed), every Allocate is matched
to a pending pod (`assignment.match`) and follows that pod's `gpulet.io/assignment` exactly:
the GPUs, shares and NICs named there, whatever slot IDs kubelet picked, as long as it
gives exactly what the pod's own resources ask (`assignment.check_entry`: anyone who can
create a pod can write the annotation). Without one (standalone), every GPU Allocate gets
the physical GPUs of its device IDs, whole and exclusively, and `preferred` picks them with
the placement engine.

Kubelet and the ledger count differently. Kubelet counts device IDs (slots); a whole GPU
holds one of its slot IDs in kubelet's books but all of the GPU in ours. Kubelet may then
offer another slot of that GPU: `preferred` never does, and `allocate` refuses it with an
error naming the GPU, so kubelet fails that pod's admission and its controller retries.
Kubelet remains the authority on IDs: it hands out an ID again either to a later container of
the same pod (an init container's IDs, reused by the app containers when kubelet admits the
pod, before any has run) or once the container holding it is gone. In standalone mode the
grant holding it is dropped (it may be such an init container, or a pod whose end has not
been reconciled yet); with pods, an earlier container's grant of the same pod is kept as
*spent* (its IDs pass on; its shares and region stay, for the init container is yet to run),
and any other is refused until the agent has seen that pod end.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence, Set
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from deviceplugin import ids, preference, regions
from deviceplugin.assignment import (
    Assignment,
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
from deviceplugin.container import ContainerView, view
from deviceplugin.grants import GpuShare, Grant
from deviceplugin.inventory import Advertised, advertised, port_down, shareable_gpus
from deviceplugin.ledger import DoubleGrantError, Ledger
from deviceplugin.resources import (
    GPU_RESOURCE,
    RDMA_RESOURCE,
    PluginConfig,
    UnknownResourceError,
    check_resource,
)
from gpulet.placement import NodeState, Placer
from gpulet.topology import Nic, Topology
from native.region import RegionError

#: Pod UIDs and container names become directory names; anything else is refused.
_PATH_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")


class AllocateError(Exception):
    """An Allocate the plugin refuses; the message is what kubelet shows on the pod."""


@dataclass(frozen=True)
class _Decision:
    gpus: tuple[GpuShare, ...]
    nics: tuple[str, ...]
    pod_uid: str | None
    container: str | None
    #: Grants holding the requested IDs, to drop; `spend`: keep them as spent.
    superseded: tuple[Grant, ...]
    spend: bool


class DevicePluginCore:
    def __init__(
        self,
        topo: Topology,
        config: PluginConfig,
        ledger: Ledger,
        pods: PodSource | None = None,
        checkpoint: Path | None = None,
        *,
        clock: Callable[[], float] = time.time,
        on_granted: Callable[[Grant], None] = lambda grant: None,
    ) -> None:
        """`on_granted` is told of every grant once it is recorded (it must not block:
        Allocate is waiting)."""
        if pods is not None and not config.node_name:
            raise ValueError("matching pods needs config.node_name (the Kubernetes node's name)")
        self._topo = topo
        self._config = config
        self._ledger = ledger
        self._pods = pods
        self._checkpoint = checkpoint
        self._clock = clock
        self._on_granted = on_granted
        self._lock = threading.Lock()
        self._placer = Placer(topo, config.capacity)
        self._gpus = {g.uuid: g for g in shareable_gpus(topo)}
        self._gpu_index = {g.index: g for g in topo.gpus}
        self._nics = {n.key: n for n in topo.nics}
        self._gpu_memory = {uuid: g.memory_mib for uuid, g in self._gpus.items()}
        #: Every ID of each device, lowest slot first (kubelet offers all of them with each
        #: GetPreferredAllocation: they are looked up, not parsed).
        self._slots = {
            resource: {
                owner: [ids.device_id(owner, slot) for slot in range(config.slots(resource))]
                for owner in (self._gpus if resource == GPU_RESOURCE else self._nics)
            }
            for resource in (GPU_RESOURCE, RDMA_RESOURCE)
        }
        self._sick_gpus: dict[int, str] = {}
        self._sick_nics: dict[str, str] = {}

    @property
    def topo(self) -> Topology:
        return self._topo

    @property
    def config(self) -> PluginConfig:
        return self._config

    # ---- inventory and health ------------------------------------------------------------

    def devices(self, resource: str) -> list[Advertised]:
        with self._lock:
            return advertised(
                self._topo,
                self._config,
                resource,
                frozenset(self._sick_gpus),
                frozenset(self._sick_nics),
            )

    def set_gpu_health(self, index: int, healthy: bool, reason: str | None = None) -> bool:
        """Mark GPU `index` (un)healthy, with why (`XID 79`); whether its health changed."""
        if index not in self._gpu_index:
            raise ValueError(f"node {self._topo.node} has no GPU{index}")
        with self._lock:
            return _set(self._sick_gpus, index, healthy, reason)

    def set_nic_health(self, key: str, healthy: bool, reason: str | None = None) -> bool:
        """Mark RDMA port `key` (un)healthy; whether its health changed. A port that is not
        ACTIVE is advertised unhealthy whatever is set here."""
        if key not in self._nics:
            raise ValueError(f"node {self._topo.node} has no RDMA port {key}")
        with self._lock:
            return _set(self._sick_nics, key, healthy, reason)

    def unhealthy_gpus(self) -> frozenset[int]:
        with self._lock:
            return frozenset(self._sick_gpus)

    def unhealthy_nics(self) -> frozenset[str]:
        """The ports marked unhealthy (ports that are not ACTIVE are not listed)."""
        with self._lock:
            return frozenset(self._sick_nics)

    def grants(self) -> tuple[Grant, ...]:
        return self._ledger.grants()

    def node_state(self) -> NodeState:
        """What the grants take of each GPU and port, as the placement engine counts it."""
        return self._ledger.node_state(self._topo, self._config)

    # ---- GetPreferredAllocation ----------------------------------------------------------

    def preferred(
        self, resource: str, available: Sequence[str], must_include: Sequence[str], size: int
    ) -> list[str]:
        """The IDs to ask kubelet for: `must_include` first, then one slot of each device
        chosen (the assignment's, else the placement engine's). Only IDs from `available` and
        `must_include`; advisory, so problems are left for `allocate` to report."""
        check_resource(resource)
        with self._lock:
            must = list(dict.fromkeys(must_include))
            slots = self._slots_by_owner(resource, [*must, *available])
            must_owners = list(dict.fromkeys(o for o in (self._owner(i) for i in must) if o))
            owners = self._assigned_owners(resource, size) if self._pods else None
            if owners is None:
                if resource == GPU_RESOURCE:
                    owners = self._pick_whole_gpus(size, slots, must_owners)
                else:
                    owners = self._pick_nics(size, slots, must_owners)
            answer = must
            for owner in owners:
                if len(answer) >= size:
                    break
                if owner not in must_owners and slots.get(owner):
                    answer.append(slots[owner][0])
            return answer

    def _owner(self, device: str) -> str | None:
        try:
            return ids.parse(device)[0]
        except ids.DeviceIdError:
            return None

    def _slots_by_owner(self, resource: str, offered: Iterable[str]) -> dict[str, list[str]]:
        """Offered IDs of devices this node has, per owner, lowest slot first."""
        offered = set(offered)
        found = {
            owner: [d for d in slots if d in offered]
            for owner, slots in self._slots[resource].items()
        }
        return {owner: slots for owner, slots in found.items() if slots}

    def _assigned_owners(self, resource: str, size: int) -> list[str] | None:
        """The devices the pending pod's assignment names, or None when there is no sure
        match (then `allocate` will say why)."""
        try:
            pod, name = self._match(resource, size)
            entry = self._entry(pod, name)
        except AllocateError:
            return None
        if resource == GPU_RESOURCE:
            return [g.uuid for g in entry.gpus]
        return list(entry.nics)

    def _pick_whole_gpus(
        self, size: int, slots: Mapping[str, list[str]], must: Sequence[str]
    ) -> list[str]:
        return preference.whole_gpus(
            self._placer,
            self._gpus,
            self._ledger.node_state(self._topo, self._config),
            size=size,
            offered=slots,
            slots_per_gpu=self._config.gpu_slots,
            sick=set(self._sick_gpus),
            must=must,
        )

    def _pick_nics(
        self, size: int, slots: Mapping[str, list[str]], must: Sequence[str]
    ) -> list[str]:
        """Close to the GPUs of the latest grant when that is a GPU grant: kubelet allocates
        one container's resources back to back, so these are most likely its GPUs."""
        must = [o for o in must if o in self._nics]
        usable = {k for k in slots if k not in self._sick_nics and port_down(self._nics[k]) is None}
        latest = next((g for g in reversed(self._ledger.grants()) if not g.spent), None)
        near = (
            {s.index for s in latest.gpus} if latest and latest.resource == GPU_RESOURCE else set()
        )
        return preference.ports(
            self._placer,
            self._ledger.node_state(self._topo, self._config).nic_slots,
            size=size,
            usable=usable | set(must),
            near=near,
            must=must,
        )

    # ---- Allocate -------------------------------------------------------------------------

    def allocate(self, resource: str, device_ids: Sequence[str]) -> ContainerView:
        """Grant `device_ids` (one container's, for one resource): record it, set up the
        container's region, and say what the container gets. AllocateError when refused."""
        try:
            check_resource(resource)
        except UnknownResourceError as e:
            raise AllocateError(str(e)) from None
        with self._lock:
            owners = self._validate(resource, device_ids)
            if self._pods is None:
                decision = self._standalone(resource, device_ids, owners)
            else:
                decision = self._assigned(resource, device_ids)
            region_dir = self._region_dir(resource, decision, device_ids)
            try:
                result = view(self._topo, self._config, decision.gpus, decision.nics, region_dir)
            except ValueError as e:
                raise AllocateError(str(e)) from None
            grant = Grant(
                resource=resource,
                device_ids=tuple(device_ids),
                gpus=decision.gpus,
                nics=decision.nics,
                pod_uid=decision.pod_uid,
                container=decision.container,
                region_dir=None if region_dir is None else str(region_dir),
                granted_at=self._clock(),
            )
            if region_dir is not None:
                self._set_up_region(region_dir, decision.gpus)
            self._commit(grant, decision)
        self._on_granted(grant)
        return result

    def _validate(self, resource: str, device_ids: Sequence[str]) -> list[str]:
        """The owner of each ID; AllocateError for an ID that is unknown or unhealthy."""
        if not device_ids:
            raise AllocateError(f"kubelet asked for no {resource} device")
        if len(set(device_ids)) != len(device_ids):
            raise AllocateError(f"kubelet listed a {resource} device ID twice: {device_ids}")
        limit = self._config.slots(resource)
        owners: list[str] = []
        for device in device_ids:
            try:
                owner, slot = ids.parse(device)
            except ids.DeviceIdError as e:
                raise AllocateError(f"unknown device ID {device!r}: {e}") from None
            if resource == GPU_RESOURCE:
                gpu = self._gpus.get(owner)
                if gpu is None:
                    raise AllocateError(
                        f"unknown device ID {device!r}: node {self._topo.node} has no GPU "
                        f"{owner} that it shares"
                    )
                what, sick = f"GPU{gpu.index} ({gpu.uuid})", self._sick_gpus.get(gpu.index)
            else:
                nic = self._nics.get(owner)
                if nic is None:
                    raise AllocateError(
                        f"unknown device ID {device!r}: node {self._topo.node} has no RDMA "
                        f"port {owner}"
                    )
                what, sick = f"RDMA port {nic.key}", self._sick_nics.get(nic.key) or port_down(nic)
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

    def _standalone(
        self, resource: str, device_ids: Sequence[str], owners: Sequence[str]
    ) -> _Decision:
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
        superseded = tuple(self._ledger.holders(resource, device_ids))
        if resource != GPU_RESOURCE:
            keys = [n.key for n in self._topo.nics if n.key in seen]
            return _Decision((), tuple(keys), None, None, superseded, spend=False)
        state = self._ledger.node_state(self._topo, self._config, excluding=superseded)
        gpus = sorted((self._gpus[o] for o in seen), key=lambda g: g.index)
        for gpu in gpus:
            if not state.gpu(gpu.index).idle:
                raise AllocateError(
                    f"GPU{gpu.index} ({gpu.uuid}) is held whole by another container; kubelet "
                    f"offered its slot {seen[gpu.uuid]} because it counts slots, not GPUs. "
                    f"Fewer than {len(gpus)} whole GPUs are free on node {self._topo.node}"
                )
        shares = tuple(GpuShare(g.uuid, g.index, 100, g.memory_mib, True) for g in gpus)
        return _Decision(shares, (), None, None, superseded, spend=False)

    def _match(self, resource: str, count: int) -> tuple[PendingPod, str]:
        assert self._pods is not None
        done = {
            (g.pod_uid, g.container, g.resource)
            for g in self._ledger.grants()
            if g.pod_uid is not None and g.container is not None
        }
        try:
            found = match(self._pods.pending_pods(), resource, count, done)
            if found is None:  # kubelet's watch may be ahead of ours: ask the source again
                self._pods.refresh()
                found = match(self._pods.pending_pods(), resource, count, done)
        except MatchError as e:
            raise AllocateError(str(e)) from None
        if found is None:
            raise AllocateError(
                f"no pod bound to node {self._config.node_name} waits for {count} {resource}: "
                "the agent has not seen the pod yet, or it was scheduled without the gpulet "
                "scheduler extender"
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
            assignment: Assignment = parse_assignment(pod.assignment_text)
        except AssignmentError as e:
            raise AllocateError(f"pod {pod.ref}: {e}") from None
        if assignment.node != self._config.node_name:
            raise AllocateError(
                f"pod {pod.ref}'s gpulet.io/assignment is for node {assignment.node!r}, but "
                f"this is node {self._config.node_name!r}"
            )
        entry = assignment.container(name)
        if entry is None:
            raise AllocateError(
                f"pod {pod.ref}'s gpulet.io/assignment has nothing for container {name!r}"
            )
        try:
            check_entry(request, entry, self._gpu_memory, self._nics.keys())
        except EntryError as e:
            raise AllocateError(f"pod {pod.ref} container {name!r}: {e}") from None
        return entry

    def _assigned(self, resource: str, device_ids: Sequence[str]) -> _Decision:
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
            gpus = tuple(
                self._share(where, a.uuid, a.core, a.memory_mib, a.exclusive) for a in entry.gpus
            )
        else:
            nics = tuple(self._port(where, key).key for key in entry.nics)
        superseded = tuple(self._ledger.holders(resource, device_ids))
        for old in superseded:
            if old.pod_uid != pod.uid:
                raise AllocateError(
                    f"device ID of {where} is still granted to pod {old.pod_uid} container "
                    f"{old.container!r} in the agent's ledger; kubelet hands it out again, so "
                    "that container is gone, but the agent has not seen it end yet"
                )
        # What an earlier container of the pod holds stays counted (it is spent, not freed):
        # the extender placed this container against it too.
        self._check_room(where, gpus, nics, ())
        return _Decision(gpus, nics, pod.uid, name, superseded, spend=True)

    def _share(self, where: str, uuid: str, core: int, memory: int, whole: bool) -> GpuShare:
        """The grant of one assigned GPU (one `check_entry` passed: the GPU is shared here,
        and a slice's memory is at most the GPU's)."""
        gpu = self._gpus[uuid]
        sick = self._sick_gpus.get(gpu.index)
        if sick is not None:
            raise AllocateError(f"{where}: assigned GPU{gpu.index} ({uuid}) is unhealthy ({sick})")
        if not whole and not self._config.limiter:
            raise AllocateError(
                f"{where} gets a slice of GPU{gpu.index} ({core}% core, {memory} MiB), but this "
                "agent runs without the limiter (its library and preload file), so the slice "
                "could not be enforced"
            )
        return GpuShare(uuid, gpu.index, core, gpu.memory_mib if whole else memory, whole)

    def _port(self, where: str, key: str) -> Nic:
        """One assigned port (one `check_entry` passed: this node has it)."""
        nic = self._nics[key]
        sick = self._sick_nics.get(key) or port_down(nic)
        if sick is not None:
            raise AllocateError(f"{where}: assigned RDMA port {key} is unhealthy ({sick})")
        return nic

    def _check_room(
        self,
        where: str,
        gpus: Sequence[GpuShare],
        nics: Sequence[str],
        superseded: Sequence[Grant],
    ) -> None:
        """Refuse an assignment that would over-commit what the ledger already granted
        (less what it supersedes)."""
        state = self._ledger.node_state(self._topo, self._config, excluding=superseded)
        behind = "; the scheduler extender's view of this node is behind the agent's"
        for share in gpus:
            gpu = self._gpu_index[share.index]
            use = state.gpu(share.index)
            name = f"GPU{gpu.index}"
            holders = _Holders(self._ledger, superseded, _on_gpu(share.index))
            problem = None
            if use.exclusive:
                problem = f"{name} is held whole by {holders}"
            elif share.exclusive and not use.idle:
                problem = f"the assignment gives {name} whole, but {holders} has a slice of it"
            elif use.slots + 1 > self._config.gpu_slots:
                problem = f"all {self._config.gpu_slots} slots of {name} are granted"
            elif use.core + share.core > 100:
                problem = (
                    f"the assignment gives {share.core}% of {name}'s core, but {use.core}% is "
                    f"already granted ({holders})"
                )
            elif use.memory_mib + share.memory_mib > gpu.memory_mib:
                problem = (
                    f"the assignment gives {share.memory_mib} MiB of {name}, but "
                    f"{use.memory_mib} of its {gpu.memory_mib} MiB are already granted ({holders})"
                )
            if problem:
                raise AllocateError(f"{where}: {problem}{behind}")
        for key in nics:
            if state.nic_slots.get(key, 0) + 1 > self._config.rdma_slots:
                holders = _Holders(self._ledger, superseded, _on_port(key))
                raise AllocateError(
                    f"{where}: all {self._config.rdma_slots} slots of RDMA port {key} are "
                    f"granted ({holders}){behind}"
                )

    def _region_dir(
        self, resource: str, decision: _Decision, device_ids: Sequence[str]
    ) -> Path | None:
        if resource != GPU_RESOURCE or not decision.gpus:
            return None
        root = self._config.region_root
        return regions.region_dir(root, decision.pod_uid, decision.container, device_ids[0])

    def _set_up_region(self, directory: Path, gpus: Sequence[GpuShare]) -> None:
        try:
            regions.set_up(directory, gpus)
        except RegionError as e:
            raise AllocateError(
                f"cannot set up the container's limits in {directory}: {e}"
            ) from None

    def _commit(self, grant: Grant, decision: _Decision) -> None:
        """Record `grant` in place of what it supersedes and save the checkpoint; undo all of
        it (region included) when the checkpoint cannot be written."""
        spent = [g.spend() for g in decision.superseded] if decision.spend else []
        for old in decision.superseded:
            self._ledger.remove(old)
        added: list[Grant] = []
        try:
            for g in [*spent, grant]:
                self._ledger.add(g)
                added.append(g)
            self._save()
        except (OSError, DoubleGrantError) as e:
            for g in added:
                self._ledger.remove(g)
            for old in decision.superseded:
                self._ledger.add(old)
            kept = {g.region_dir for g in decision.superseded}
            if grant.region_dir and grant.region_dir not in kept:
                self._remove_region(grant.region_dir)
            if isinstance(e, DoubleGrantError):
                raise AllocateError(str(e)) from None
            raise AllocateError(f"cannot write the checkpoint {self._checkpoint}: {e}") from None
        self._remove_regions(decision.superseded)

    # ---- release ----------------------------------------------------------------------------

    def release_pod(self, uid: str) -> list[Grant]:
        """Forget pod `uid`'s grants and remove their region directories."""
        with self._lock:
            dropped = self._ledger.remove_pod(uid)
            self._after_drop(dropped)
            return dropped

    def reconcile(
        self, live: Mapping[str, Set[str]], listed_at: float | None = None
    ) -> list[Grant]:
        """Drop the grants whose device IDs kubelet's pod-resources List (taken at
        `listed_at`) no longer shows in use; see `Ledger.reconcile`."""
        with self._lock:
            dropped = self._ledger.reconcile(live, listed_at)
            self._after_drop(dropped)
            return dropped

    def _after_drop(self, dropped: Sequence[Grant]) -> None:
        if dropped:
            self._remove_regions(dropped)
            self._save()

    def _save(self) -> None:
        if self._checkpoint is not None:
            self._ledger.save(self._checkpoint)

    def _remove_regions(self, grants: Iterable[Grant]) -> None:
        in_use = {g.region_dir for g in self._ledger.grants()}
        for g in grants:
            if g.region_dir and g.region_dir not in in_use:
                self._remove_region(g.region_dir)

    def _remove_region(self, directory: str) -> None:
        regions.remove(self._config.region_root, directory)


K = TypeVar("K")


def _set(sick: dict[K, str], key: K, healthy: bool, reason: str | None) -> bool:
    was = key in sick
    if healthy:
        sick.pop(key, None)
    else:
        sick[key] = reason or "marked unhealthy"
    return was == healthy


class _Holders:
    """Who holds a device (the grants `holds`), named only when a refusal is written: finding
    them walks the ledger."""

    def __init__(
        self, ledger: Ledger, excluding: Sequence[Grant], holds: Callable[[Grant], bool]
    ) -> None:
        self._ledger, self._excluding, self._holds = ledger, excluding, holds

    def __str__(self) -> str:
        return ", ".join(
            _who(g) for g in self._ledger.grants() if g not in self._excluding and self._holds(g)
        )


def _on_gpu(index: int) -> Callable[[Grant], bool]:
    return lambda grant: any(s.index == index for s in grant.gpus)


def _on_port(key: str) -> Callable[[Grant], bool]:
    return lambda grant: key in grant.nics


def _who(grant: Grant) -> str:
    if grant.pod_uid is None:
        return "a standalone container"
    return f"pod {grant.pod_uid} container {grant.container!r}"
