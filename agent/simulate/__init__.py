"""Simulated nodes: a spec turned into a sysfs tree and an NVML stand-in.

The same discovery code that reads a DGX's `/sys` and NVML reads a simulated node's
`sysfs/` and `nvml.json`. Format and shipped nodes: docs/simulated-nodes.md.
"""

from agent.simulate.errors import SimulationError
from agent.simulate.generate import generate
from agent.simulate.node import (
    SimulatedNode,
    load_directory,
    load_spec,
    open_simulated,
    shipped_nodes,
    shipped_spec,
)
from agent.simulate.nvml import SimulatedNvml, SimulatedNvmlError
from agent.simulate.parse import parse_spec, spec_from_data
from agent.simulate.spec import NodeSpec

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
