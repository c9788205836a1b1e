"""Link classes between two devices, as `nvidia-smi topo -m` defines its legend.

`X` the device itself; `NV#` a bonded set of # NVLinks; `PIX` at most one PCIe switch
between them; `PXB` several switches but no host bridge; `PHB` through a PCIe host bridge;
`NODE` across host bridges within one NUMA node; `SYS` across the inter-socket link.

A PCIe switch shows up in sysfs as an upstream-port bridge whose children are
downstream-port bridges. Below a root port, the bridges on a device's path therefore
alternate: root port, upstream port, downstream port, upstream port, ... so upstream
ports sit at the odd positions of `PcieLocation.bridges`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gpulet.topology.model import PcieLocation

#: Order of PCIe link classes, best first. NVLink ranks before all of them.
LINK_RANK: dict[str, int] = {"PIX": 0, "PXB": 1, "PHB": 2, "NODE": 3, "SYS": 4}


def nvlink_count(link: str) -> int:
    """Number of NVLinks in an `NV#` class, 0 for any other class."""
    if link.startswith("NV") and link[2:].isdigit():
        return int(link[2:])
    return 0


def link_rank(link: str) -> int:
    """Rank of a link class: 0 best. NVLink is -1 (better than any PCIe path)."""
    if nvlink_count(link):
        return -1
    try:
        return LINK_RANK[link]
    except KeyError:
        raise ValueError(f"unknown link class {link!r}") from None


def _upstream_ports_below(bridges: tuple[str, ...], start: int) -> int:
    return sum(1 for i in range(start, len(bridges)) if i % 2 == 1)


def pcie_link(a: PcieLocation, a_numa: int, b: PcieLocation, b_numa: int) -> str:
    """Classify the PCIe path between two devices (no NVLink considered)."""
    if a.pci == b.pci:
        return "X"
    if a.host_bridge == b.host_bridge:
        common = 0
        for x, y in zip(a.bridges, b.bridges, strict=False):
            if x != y:
                break
            common += 1
        if common:
            lca = common - 1
            switches = (
                _upstream_ports_below(a.bridges, common)
                + _upstream_ports_below(b.bridges, common)
                + (1 if lca % 2 == 1 else 0)
            )
            return "PIX" if switches <= 1 else "PXB"
        if not a.bridges and not b.bridges and a.pci[:-1] == b.pci[:-1]:
            # Two functions of one device sitting straight on the root bus.
            return "PIX"
        return "PHB"
    return "NODE" if a_numa == b_numa else "SYS"
