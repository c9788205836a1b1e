"""RDMA ports as topology NICs: one `Nic` per port, with its netdev's link state."""

from __future__ import annotations

from collections.abc import Sequence

from agent.discovery.infiniband import RdmaPort
from agent.discovery.netlink import LinkStateReader
from agent.discovery.numa import function_numa
from agent.discovery.sysfs import SysfsTree
from gpulet.topology.model import Nic, NumaNode


def build_nics(
    tree: SysfsTree,
    ports: Sequence[RdmaPort],
    numa_nodes: Sequence[NumaNode],
    links: LinkStateReader,
) -> list[Nic]:
    return [
        Nic(
            name=p.device,
            port=p.port,
            location=p.function.location,
            numa=function_numa(tree, p.function, numa_nodes),
            netdev=p.netdev,
            state=p.state,
            link=links.operstate(p.netdev) if p.netdev else None,
            rate_gbps=p.rate_gbps,
            link_layer=p.link_layer,
            uverbs=p.uverbs,
        )
        for p in ports
    ]
