"""Hardware discovery: GPUs (NVML), their place in the PCIe tree, RDMA NICs and NUMA nodes
(sysfs), and netdev link state, assembled into a `Topology`.

Every source is a parameter, so the same code reads a real node (`Path("/sys")`,
`PynvmlBackend`, `NetlinkLinkState`) or a simulated one (a sysfs tree and its nvml.json).
"""

from __future__ import annotations

from pathlib import Path

from agent.discovery.errors import DiscoveryError
from agent.discovery.gpus import build_gpus
from agent.discovery.infiniband import read_rdma_ports
from agent.discovery.netlink import LinkStateReader
from agent.discovery.nics import build_nics
from agent.discovery.numa import read_numa_nodes
from agent.discovery.nvml import NvmlBackend
from agent.discovery.sysfs import SysfsTree
from gpulet.topology.model import Topology

__all__ = ["DiscoveryError", "LinkStateReader", "discover"]


def discover(
    sysfs_root: Path, nvml: NvmlBackend, links: LinkStateReader, node_name: str
) -> Topology:
    """The node's topology. Raises DiscoveryError for a tree it cannot read, NvmlError
    when NVML fails."""
    tree = SysfsTree(sysfs_root)
    numa_nodes = read_numa_nodes(tree)
    gpus = build_gpus(tree, nvml.gpus(), numa_nodes)
    nics = build_nics(tree, read_rdma_ports(tree), numa_nodes, links)
    return Topology.build(node_name, gpus, nics, numa_nodes, driver=nvml.driver_version())
