"""The node's devices as the plugin serves them: what it advertises to kubelet (every slot of
every device, with health and NUMA), and the lookups its decisions use (`Inventory`)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from deviceplugin import ids
from deviceplugin.ids import device_id
from deviceplugin.resources import GPU_RESOURCE, RDMA_RESOURCE, PluginConfig, check_resource
from gpulet.topology import Gpu, Nic, Topology


@dataclass(frozen=True)
class Advertised:
    id: str
    healthy: bool
    #: The device's NUMA node; None when the kernel does not know it (-1).
    numa: int | None


def shareable_gpus(topo: Topology) -> tuple[Gpu, ...]:
    """The GPUs the plugin slices and advertises: MIG-enabled ones are left out."""
    return tuple(g for g in topo.gpus if not g.mig)


def port_down(nic: Nic) -> str | None:
    """Why a port cannot carry traffic whatever its health (its IB state), or None."""
    return None if nic.active else f"port {nic.state}"


def owner_of(device: str) -> str | None:
    """The device (GPU UUID or port key) a device ID is a slot of; None for a bad ID."""
    try:
        return ids.parse(device)[0]
    except ids.DeviceIdError:
        return None


@dataclass(frozen=True, eq=False)
class Inventory:
    """One node's devices under the names kubelet and the assignment use, built once (`of`):
    read-only plain values."""

    topo: Topology
    config: PluginConfig
    #: The GPUs the plugin shares (not MIG), by UUID.
    gpus: Mapping[str, Gpu]
    #: Every GPU of the node, by index.
    gpu_index: Mapping[int, Gpu]
    #: The RDMA ports, by key.
    nics: Mapping[str, Nic]
    #: Each shared GPU's memory in MiB, by UUID.
    gpu_memory: Mapping[str, int]
    #: Per resource, every ID of each device, lowest slot first (kubelet offers all of them
    #: with each GetPreferredAllocation: they are looked up, not parsed).
    slots: Mapping[str, Mapping[str, Sequence[str]]]

    @classmethod
    def of(cls, topo: Topology, config: PluginConfig) -> Inventory:
        gpus = {g.uuid: g for g in shareable_gpus(topo)}
        nics = {n.key: n for n in topo.nics}
        slots = {
            resource: {
                owner: [device_id(owner, slot) for slot in range(config.slots(resource))]
                for owner in (gpus if resource == GPU_RESOURCE else nics)
            }
            for resource in (GPU_RESOURCE, RDMA_RESOURCE)
        }
        return cls(
            topo=topo,
            config=config,
            gpus=gpus,
            gpu_index={g.index: g for g in topo.gpus},
            nics=nics,
            gpu_memory={uuid: g.memory_mib for uuid, g in gpus.items()},
            slots=slots,
        )

    @property
    def node(self) -> str:
        return self.topo.node

    def slots_by_owner(self, resource: str, offered: Iterable[str]) -> dict[str, list[str]]:
        """Offered IDs of devices this node has, per owner, lowest slot first."""
        offered = set(offered)
        found = {
            owner: [d for d in slots if d in offered]
            for owner, slots in self.slots[resource].items()
        }
        return {owner: slots for owner, slots in found.items() if slots}


def advertised(
    topo: Topology,
    config: PluginConfig,
    resource: str,
    unhealthy_gpus: frozenset[int],
    unhealthy_nics: frozenset[str],
) -> list[Advertised]:
    """Every slot of every non-MIG GPU, or of every RDMA port (a port that is not ACTIVE is
    unhealthy), in the topology's device order."""
    check_resource(resource)
    out: list[Advertised] = []
    if resource == GPU_RESOURCE:
        for gpu in shareable_gpus(topo):
            healthy = gpu.index not in unhealthy_gpus
            numa = gpu.numa if gpu.numa >= 0 else None
            out += [
                Advertised(device_id(gpu.uuid, s), healthy, numa) for s in range(config.gpu_slots)
            ]
    else:
        for nic in topo.nics:
            healthy = nic.key not in unhealthy_nics and port_down(nic) is None
            numa = nic.numa if nic.numa >= 0 else None
            out += [
                Advertised(device_id(nic.key, s), healthy, numa) for s in range(config.rdma_slots)
            ]
    return out
