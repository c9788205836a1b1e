"""Shipped simulated nodes, discovered once per test session; and GPUs for a hand-made one."""

from __future__ import annotations

from functools import cache

from agent.simnode import open_simulated
from gpulet.topology import Gpu, PcieLocation, Topology

SHIPPED = ("dgx-a100", "dgx-h100", "h100-vm", "pcie-4gpu", "pcie-16gpu")


@cache
def shipped(name: str) -> Topology:
    return open_simulated(name).topology()


def switch_gpus(peers: list[tuple[tuple[int, int], ...]]) -> list[Gpu]:
    """GPUs 0..n-1 of 1000 MiB behind one PCIe switch on NUMA node 0, GPU i NVLinked as
    `peers[i]` says ((peer index, links), ...)."""
    host, port, up = "pci0000:00", "0000:00:01.0", "0000:01:00.0"
    return [
        Gpu(
            i,
            f"GPU-{i:04d}",
            "Test GPU",
            1000,
            i,
            PcieLocation(f"0000:{3 + i:02x}:00.0", host, (port, up, f"0000:02:{i:02x}.0")),
            0,
            nvlink_peers=p,
        )
        for i, p in enumerate(peers)
    ]
