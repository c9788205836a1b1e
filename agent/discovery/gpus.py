"""GPUs as NVML reports them, placed in the PCIe tree and on NUMA nodes from sysfs."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from agent.discovery.errors import DiscoveryError
from agent.discovery.numa import function_numa
from agent.discovery.nvml import NvmlGpu
from agent.discovery.pci import PCI_DEVICES, find_pci_function, normalize_bus_id
from agent.discovery.sysfs import SysfsTree
from gpulet.topology.model import Gpu, NumaNode


def build_gpus(
    tree: SysfsTree, reported: Sequence[NvmlGpu], numa_nodes: Sequence[NumaNode]
) -> list[Gpu]:
    """One `Gpu` per NVML device. Raises DiscoveryError for a GPU sysfs does not have."""
    bus_ids = {g.index: _bus_id(g) for g in reported}
    if len(bus_ids) != len(reported):
        indices = sorted(g.index for g in reported)
        raise DiscoveryError(f"NVML reported GPU indices more than once: {indices}")
    index_by_bus = {bus: index for index, bus in bus_ids.items()}
    gpus: list[Gpu] = []
    for g in reported:
        bus = bus_ids[g.index]
        function = find_pci_function(tree, bus)
        if function is None:
            raise DiscoveryError(
                f"GPU {g.index} ({bus}, reported by NVML) has no entry "
                f"{tree.display(PCI_DEVICES / bus)}"
            )
        switch_links, peers = _nvlinks(g, index_by_bus)
        gpus.append(
            Gpu(
                index=g.index,
                uuid=g.uuid,
                model=g.name,
                memory_mib=g.memory_total_bytes // 2**20,
                minor=g.minor,
                location=function.location,
                numa=function_numa(tree, function, numa_nodes),
                mig=g.mig_enabled,
                nvswitch_links=switch_links,
                nvlink_peers=peers,
            )
        )
    return gpus


def _bus_id(gpu: NvmlGpu) -> str:
    try:
        return normalize_bus_id(gpu.pci_bus_id)
    except ValueError:
        raise DiscoveryError(
            f"NVML reported a malformed PCI bus id {gpu.pci_bus_id!r} for GPU {gpu.index}"
        ) from None


def _nvlinks(gpu: NvmlGpu, index_by_bus: dict[str, int]) -> tuple[int, tuple[tuple[int, int], ...]]:
    """Active links into an NVSwitch fabric, and active direct links per peer GPU index.

    A link whose far end is a GPU NVML did not list (or the GPU itself) is not counted.
    """
    switch_links = 0
    peers: Counter[int] = Counter()
    for link in gpu.nvlinks:
        if not link.active:
            continue
        if link.remote_type == "switch":
            switch_links += 1
        elif link.remote_type == "gpu":
            try:
                peer = index_by_bus.get(normalize_bus_id(link.remote_pci))
            except ValueError:
                raise DiscoveryError(
                    f"NVML reported a malformed remote PCI bus id {link.remote_pci!r} "
                    f"on GPU {gpu.index} link {link.link}"
                ) from None
            if peer is not None and peer != gpu.index:
                peers[peer] += 1
    return switch_links, tuple(sorted(peers.items()))
