"""Where the agent reads its node: a real one (the host's /sys and NVML) or a simulated one
(`agent.simnode`: a generated sysfs tree, an NVML stand-in, files for XIDs and usage). The
choice is made here, once; the rest of the agent sees only the interfaces."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

from agent.discovery import discover
from agent.discovery.netlink import SysfsLinkState
from agent.health import FileXidSource, NvmlXidSource, SysfsPortStates
from agent.health import xid_file as simulated_xid_file
from agent.simnode import open_simulated
from agent.usage import FileUsageSource, PynvmlUsageSource, UsageSource
from deviceplugin.health import PortStates, XidSource
from gpulet.topology import Topology

#: In a simulated node's directory: the GPU processes NVML would list (FileUsageSource).
USAGE_FILE = "gpu-processes.json"


@dataclass(frozen=True)
class Adapters:
    """The node's topology, and where its GPUs' XIDs, its RDMA ports' state and its GPU
    processes' usage come from. `xid_file`: on a simulated node, the file XIDs are
    injected into (None on a real one: NVML's events)."""

    topo: Topology
    xids: XidSource
    ports: PortStates
    usage: UsageSource
    xid_file: Path | None = None


def read_adapters(
    simulate: str | None, *, xid_file: Path | None = None, usage_file: Path | None = None
) -> Adapters:
    """The simulated node `simulate` (a shipped name or a directory; `xid_file` and
    `usage_file` replace its own files), or, with None, this machine. NVML (pynvml) is
    used only for a real node."""
    if simulate is not None:
        return _simulated(simulate, xid_file, usage_file)
    return _real()


def _simulated(name: str, xids: Path | None, usage: Path | None) -> Adapters:
    sim = open_simulated(name)
    topo = sim.topology()
    injected = xids or simulated_xid_file(sim.root)
    return Adapters(
        topo=topo,
        xids=FileXidSource(injected),
        ports=SysfsPortStates(sim.sysfs, topo, SysfsLinkState(sim.sysfs)),
        usage=FileUsageSource(usage or sim.root / USAGE_FILE),
        xid_file=injected,
    )


def _real() -> Adapters:
    import pynvml  # noqa: PLC0415

    from agent.discovery.pynvml_backend import PynvmlBackend  # noqa: PLC0415

    # Link state from the host's sysfs, not netlink: in its pod the agent has a network
    # namespace of its own, where the host's netdevs are not (the DaemonSet mounts the
    # host's /sys at /sys).
    host = Path("/sys")
    links = SysfsLinkState(host)
    topo = discover(host, PynvmlBackend(), links, socket.gethostname())
    return Adapters(
        topo=topo,
        xids=NvmlXidSource(pynvml),
        ports=SysfsPortStates(host, topo, links),
        usage=PynvmlUsageSource(),
    )
