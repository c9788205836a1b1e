"""Shipped simulated nodes, discovered once per test session."""

from __future__ import annotations

from functools import cache

from agent.simnode import open_simulated
from gpulet.topology import Topology

SHIPPED = ("dgx-a100", "dgx-h100", "h100-vm", "pcie-4gpu", "pcie-16gpu")


@cache
def shipped(name: str) -> Topology:
    return open_simulated(name).topology()
