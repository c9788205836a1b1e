"""NUMA nodes from `devices/system/node`, and which node a device belongs to."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import PurePosixPath

import psutil

from agent.discovery.errors import DiscoveryError
from agent.discovery.pci import PciFunction
from agent.discovery.sysfs import SysfsTree
from gpulet.topology.cpulist import parse_cpulist
from gpulet.topology.model import NumaNode

NODES = PurePosixPath("devices/system/node")
CPUS_ONLINE = PurePosixPath("devices/system/cpu/online")

_NODE_DIR = re.compile(r"node(\d+)")
_MEM_TOTAL = re.compile(r"Node\s+\d+\s+MemTotal:\s+(\d+)\s*kB")


def read_numa_nodes(tree: SysfsTree) -> tuple[NumaNode, ...]:
    """Every `nodeN` with its CPUs and memory.

    Without a node directory (a kernel built without NUMA) the machine is one node 0 holding
    every online CPU (`devices/system/cpu/online`, else psutil's count on the host's own
    /sys) and, on the host, all its memory; a copied tree without either gives no CPUs, 0 MiB.
    """
    nodes = [
        _read_node(tree, int(m[1]))
        for name in tree.listdir(NODES)
        if (m := _NODE_DIR.fullmatch(name))
    ]
    if nodes:
        return tuple(sorted(nodes, key=lambda n: n.id))
    return (_single_node(tree),)


def _read_node(tree: SysfsTree, node: int) -> NumaNode:
    base = NODES / f"node{node}"
    cpulist = base / "cpulist"
    try:
        cpus = parse_cpulist(tree.read(cpulist))
    except ValueError as err:
        raise DiscoveryError(f"{tree.display(cpulist)}: {err}") from None
    meminfo = base / "meminfo"
    m = _MEM_TOTAL.search(tree.read(meminfo))
    if not m:
        raise DiscoveryError(f"{tree.display(meminfo)}: no 'Node {node} MemTotal: <n> kB' line")
    return NumaNode(id=node, cpus=cpus, memory_mib=int(m[1]) // 1024)


def _single_node(tree: SysfsTree) -> NumaNode:
    host = tree.is_host_sysfs()
    online = tree.read_optional(CPUS_ONLINE)
    if online is not None:
        try:
            cpus = parse_cpulist(online)
        except ValueError as err:
            raise DiscoveryError(f"{tree.display(CPUS_ONLINE)}: {err}") from None
    elif host:
        cpus = tuple(range(psutil.cpu_count() or 1))
    else:
        cpus = ()
    memory = psutil.virtual_memory().total // 2**20 if host else 0
    return NumaNode(id=0, cpus=cpus, memory_mib=memory)


def device_numa(
    kernel_node: int, local_cpus: Sequence[int], nodes: Sequence[NumaNode], source: str
) -> int:
    """The NUMA node of a device whose sysfs `numa_node` reads `kernel_node`.

    -1 (firmware did not say) becomes the only node on a one-node machine, else the node
    whose CPUs hold all of the device's `local_cpulist`, else the lowest node. A node that
    `devices/system/node` does not list is an error naming `source`.
    """
    ids = [n.id for n in nodes]
    if kernel_node >= 0:
        if kernel_node not in ids:
            raise DiscoveryError(
                f"{source}: NUMA node {kernel_node} is not among the machine's nodes {ids}"
            )
        return kernel_node
    if len(nodes) > 1 and local_cpus:
        wanted = set(local_cpus)
        holding = [n.id for n in nodes if wanted <= set(n.cpus)]
        if len(holding) == 1:
            return holding[0]
    return min(ids, default=0)


def function_numa(tree: SysfsTree, function: PciFunction, nodes: Sequence[NumaNode]) -> int:
    """`device_numa` for a PCI function read from `tree`."""
    source = tree.display(function.path / "numa_node")
    return device_numa(function.numa_node, function.local_cpus, nodes, source)
