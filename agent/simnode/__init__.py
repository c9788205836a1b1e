"""Simulated nodes: a spec turned into a sysfs tree and an NVML stand-in.

The same discovery code that reads a DGX's `/sys` and NVML reads a simulated node's
`sysfs/` and `nvml.json`. Format and shipped nodes: docs/simulated-nodes.md.
"""

from agent.simnode.errors import SimulationError
from agent.simnode.generate import generate
from agent.simnode.node import (
    SimulatedNode,
    load_directory,
    load_spec,
    open_simulated,
    shipped_nodes,
    shipped_spec,
)
from agent.simnode.nvml import SimulatedNvml, SimulatedNvmlError
from agent.simnode.parse import parse_spec, spec_from_data
from agent.simnode.spec import NodeSpec

__all__ = [
    "NodeSpec",
    "SimulatedNode",
    "SimulatedNvml",
    "SimulatedNvmlError",
    "SimulationError",
    "generate",
    "load_directory",
    "load_spec",
    "open_simulated",
    "parse_spec",
    "shipped_nodes",
    "shipped_spec",
    "spec_from_data",
]
