"""What the plugin advertises to kubelet: every slot of every device, with health and NUMA."""

from __future__ import annotations

from dataclasses import dataclass

from deviceplugin.ids import device_id
from deviceplugin.resources import GPU_RESOURCE, PluginConfig, check_resource
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
