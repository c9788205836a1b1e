"""Dataclasses for one node's topology. Immutable; built once by discovery."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from gpulet.topology.links import pcie_link


@dataclass(frozen=True)
class PcieLocation:
    """Where a device sits in the PCIe tree.

    `pci` is the function's address (`0000:07:00.0`, lower-case; the domain has 4 hex digits,
    5 behind Intel VMD);
    `host_bridge` the root complex it hangs from (`pci0000:00`); `bridges` the bridge
    functions on the way down, root port first (empty for a device on the root bus).
    """

    pci: str
    host_bridge: str
    bridges: tuple[str, ...] = ()

    @property
    def switch(self) -> str | None:
        """The top PCIe switch under the root port (its upstream port's address), if any."""
        return self.bridges[1] if len(self.bridges) >= 2 else None


@dataclass(frozen=True)
class Gpu:
    index: int
    uuid: str
    model: str
    memory_mib: int
    minor: int
    location: PcieLocation
    numa: int
    mig: bool = False
    #: NVLinks from this GPU into an NVSwitch fabric.
    nvswitch_links: int = 0
    #: Direct NVLinks to other GPUs, as (peer GPU index, number of links).
    nvlink_peers: tuple[tuple[int, int], ...] = ()

    @property
    def name(self) -> str:
        return f"GPU{self.index}"

    @property
    def pci(self) -> str:
        return self.location.pci

    @property
    def switch(self) -> str | None:
        return self.location.switch


@dataclass(frozen=True)
class Nic:
    """One RDMA port. `name` is the RDMA device (`mlx5_0`); a device with several ports
    gets one entry per port, keyed `mlx5_0` for port 1 and `mlx5_0:2` for port 2."""

    name: str
    port: int
    location: PcieLocation
    numa: int
    netdev: str | None
    #: InfiniBand port state: ACTIVE, DOWN, INIT, ARMED, POLLING, ...
    state: str
    #: Netdev operational state (UP, DOWN, UNKNOWN), None when the port has no netdev.
    link: str | None
    rate_gbps: float
    link_layer: str
    #: The N of the device's `/dev/infiniband/uverbsN`, as the kernel registered it; None
    #: where it has no verbs device (`ib_uverbs` not loaded) or an older document.
    uverbs: int | None = None

    @property
    def key(self) -> str:
        return self.name if self.port == 1 else f"{self.name}:{self.port}"

    @property
    def pci(self) -> str:
        return self.location.pci

    @property
    def switch(self) -> str | None:
        return self.location.switch

    @property
    def active(self) -> bool:
        return self.state == "ACTIVE"


@dataclass(frozen=True)
class NumaNode:
    id: int
    cpus: tuple[int, ...]
    memory_mib: int


def _natural(name: str) -> tuple[tuple[int, str], ...]:
    """Sort key putting mlx5_2 before mlx5_10."""
    return tuple((int(p), "") if p.isdigit() else (-1, p) for p in re.split(r"(\d+)", name))


def _gpu_link(a: Gpu, b: Gpu) -> str:
    direct = sum(n for peer, n in a.nvlink_peers if peer == b.index)
    fabric = min(a.nvswitch_links, b.nvswitch_links)
    count = direct + fabric
    if count:
        return f"NV{count}"
    return pcie_link(a.location, a.numa, b.location, b.numa)


def compute_links(gpus: tuple[Gpu, ...], nics: tuple[Nic, ...]) -> dict[str, dict[str, str]]:
    """The full pairwise matrix, keyed by `GPU<i>` and NIC key, with `X` on the diagonal.

    GPU pairs: direct NVLinks plus, when both GPUs reach an NVSwitch fabric, the smaller
    of their fabric link counts (what `nvidia-smi` shows as NV12 on a DGX A100).
    """
    names: list[tuple[str, PcieLocation, int]] = [(g.name, g.location, g.numa) for g in gpus]
    names += [(n.key, n.location, n.numa) for n in nics]
    by_name = {g.name: g for g in gpus}
    links: dict[str, dict[str, str]] = {}
    for a, a_loc, a_numa in names:
        row: dict[str, str] = {}
        for b, b_loc, b_numa in names:
            if a == b:
                row[b] = "X"
            elif a in by_name and b in by_name:
                row[b] = _gpu_link(by_name[a], by_name[b])
            else:
                row[b] = pcie_link(a_loc, a_numa, b_loc, b_numa)
        links[a] = row
    return links


@dataclass(frozen=True)
class Topology:
    node: str
    gpus: tuple[Gpu, ...]
    nics: tuple[Nic, ...]
    numa_nodes: tuple[NumaNode, ...]
    driver: str | None = None
    links: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        node: str,
        gpus: tuple[Gpu, ...] | list[Gpu],
        nics: tuple[Nic, ...] | list[Nic],
        numa_nodes: tuple[NumaNode, ...] | list[NumaNode],
        driver: str | None = None,
    ) -> Topology:
        """Build a topology, sorting devices and computing the link matrix."""
        g = tuple(sorted(gpus, key=lambda x: x.index))
        n = tuple(sorted(nics, key=lambda x: (_natural(x.name), x.port)))
        m = tuple(sorted(numa_nodes, key=lambda x: x.id))
        return cls(node, g, n, m, driver, compute_links(g, n))

    def link(self, a: str, b: str) -> str:
        return self.links[a][b]

    def numa_node(self, numa_id: int) -> NumaNode | None:
        for node in self.numa_nodes:
            if node.id == numa_id:
                return node
        return None

    def switches(self) -> dict[str, tuple[list[Gpu], list[Nic]]]:
        """Each PCIe switch id with the GPUs and NICs behind it."""
        out: dict[str, tuple[list[Gpu], list[Nic]]] = {}
        for gpu in self.gpus:
            if gpu.switch:
                out.setdefault(gpu.switch, ([], []))[0].append(gpu)
        for nic in self.nics:
            if nic.switch:
                out.setdefault(nic.switch, ([], []))[1].append(nic)
        return out
