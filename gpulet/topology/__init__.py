"""The pure model of one node's hardware: GPUs, RDMA NICs, NUMA nodes, the PCIe tree
and the pairwise link matrix. No I/O here: discovery (agent) builds it, the scorer reads it."""

from gpulet.topology.cpulist import format_cpulist, parse_cpulist
from gpulet.topology.links import LINK_RANK, link_rank, nvlink_count, pcie_link
from gpulet.topology.model import Gpu, Nic, NumaNode, PcieLocation, Topology

__all__ = [
    "LINK_RANK",
    "Gpu",
    "Nic",
    "NumaNode",
    "PcieLocation",
    "Topology",
    "format_cpulist",
    "link_rank",
    "nvlink_count",
    "parse_cpulist",
    "pcie_link",
]
