"""Shipped simulated nodes, discovered once per test session."""

from __future__ import annotations

from functools import cache

from agent.discovery import discover
from agent.discovery.netlink import SysfsLinkState
from agent.simnode import open_simulated
from gpulet.topology import Topology

SHIPPED = ("dgx-a100", "dgx-h100", "h100-vm", "pcie-4gpu", "pcie-16gpu")


@cache
def shipped(name: str) -> Topology:
    sim = open_simulated(name)
    return discover(sim.sysfs, sim.nvml, SysfsLinkState(sim.sysfs), sim.name)
