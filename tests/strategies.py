"""Hypothesis strategies: random PCIe trees, node states and requests."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace

from hypothesis import strategies as st

from gpulet.placement import (
    Capacity,
    GpuPolicy,
    GpuUsage,
    NodeState,
    Request,
    TopologyPolicy,
)
from gpulet.topology import Gpu, Nic, NumaNode, PcieLocation, Topology

#: GPULET_HYPOTHESIS_SCALE=10 runs every property test with ten times the examples.
SCALE = int(os.environ.get("GPULET_HYPOTHESIS_SCALE", "1"))


def examples(n: int) -> int:
    return n * SCALE


@dataclass
class _Builder:
    gpus: list[Gpu] = field(default_factory=list)
    nics: list[Nic] = field(default_factory=list)
    bus: int = 0

    def next_bus(self) -> int:
        self.bus += 1
        return self.bus

    def endpoint(self, kind: str, loc: PcieLocation, numa: int) -> None:
        if kind == "gpu":
            i = len(self.gpus)
            self.gpus.append(Gpu(i, f"GPU-{i:04d}", "Test GPU", 1000, i, loc, numa))
        else:
            i = len(self.nics)
            self.nics.append(
                Nic(f"mlx5_{i}", 1, loc, numa, f"ib{i}", "ACTIVE", "UP", 200.0, "InfiniBand")
            )


@st.composite
def topologies(draw: st.DrawFn, max_gpus: int = 6, max_nics: int = 5) -> Topology:
    """A random node: NUMA nodes, host bridges, root ports with cards or switch trees
    (nested up to two levels), and no NVLink, an NVSwitch fabric, or random NVLink pairs."""
    b = _Builder()
    n_numa = draw(st.integers(1, 3))
    kinds = st.sampled_from(["gpu", "nic"])
    for hb in range(draw(st.integers(1, 4))):
        numa = draw(st.integers(0, n_numa - 1))
        host = f"pci0000:{hb * 0x20:02x}"
        for port in range(draw(st.integers(1, 2))):
            rp = f"0000:{hb * 0x20:02x}:{port + 1:02x}.0"
            shape = draw(st.sampled_from(["card", "switch", "switch2", "rootbus"]))
            if shape == "rootbus":
                for fn in range(draw(st.integers(1, 2))):
                    loc = PcieLocation(f"0000:{hb * 0x20:02x}:{port + 8:02x}.{fn}", host)
                    b.endpoint(draw(kinds), loc, numa)
            elif shape == "card":
                bus = b.next_bus()
                for fn in range(draw(st.integers(1, 2))):
                    b.endpoint(
                        draw(kinds), PcieLocation(f"0000:{bus:02x}:00.{fn}", host, (rp,)), numa
                    )
            else:
                up = f"0000:{b.next_bus():02x}:00.0"
                for _ in range(draw(st.integers(1, 3))):
                    down = f"0000:{b.next_bus():02x}:00.0"
                    if shape == "switch2" and draw(st.booleans()):
                        up2 = f"0000:{b.next_bus():02x}:00.0"
                        for _ in range(draw(st.integers(1, 2))):
                            down2 = f"0000:{b.next_bus():02x}:00.0"
                            loc = PcieLocation(
                                f"0000:{b.next_bus():02x}:00.0", host, (rp, up, down, up2, down2)
                            )
                            b.endpoint(draw(kinds), loc, numa)
                    else:
                        loc = PcieLocation(f"0000:{b.next_bus():02x}:00.0", host, (rp, up, down))
                        b.endpoint(draw(kinds), loc, numa)
    gpus, nics = b.gpus[:max_gpus], b.nics[:max_nics]
    nvlink = draw(st.sampled_from(["none", "fabric", "pairs"]))
    if nvlink == "fabric":
        gpus = [_with(g, nvswitch_links=12) for g in gpus]
    elif nvlink == "pairs" and len(gpus) >= 2:
        peers: dict[int, list[tuple[int, int]]] = {g.index: [] for g in gpus}
        for _ in range(draw(st.integers(1, len(gpus)))):
            x, y = draw(
                st.lists(st.sampled_from(range(len(gpus))), min_size=2, max_size=2, unique=True)
            )
            n = draw(st.sampled_from([2, 4]))
            peers[x].append((y, n))
            peers[y].append((x, n))
        gpus = [_with(g, nvlink_peers=tuple(peers[g.index])) for g in gpus]
    numa_nodes = [NumaNode(i, (2 * i, 2 * i + 1), 1024) for i in range(n_numa)]
    return Topology.build("random", gpus, nics, numa_nodes)


def _with(gpu: Gpu, **changes: object) -> Gpu:
    return replace(gpu, **changes)  # type: ignore[arg-type]


@st.composite
def node_states(draw: st.DrawFn, topo: Topology, capacity: Capacity) -> NodeState:
    """Random allocations: each GPU idle, held whole, or carrying some slices."""
    gpus: dict[int, GpuUsage] = {}
    for gpu in topo.gpus:
        kind = draw(st.sampled_from(["idle", "idle", "idle", "whole", "slices", "slices"]))
        if kind == "whole":
            gpus[gpu.index] = GpuUsage(capacity.gpu_slots, 100, gpu.memory_mib, True)
        elif kind == "slices":
            slots = draw(st.integers(1, capacity.gpu_slots))
            gpus[gpu.index] = GpuUsage(
                slots, draw(st.integers(0, 100)), draw(st.integers(0, gpu.memory_mib))
            )
    nic_slots = {n.key: draw(st.sampled_from([0, 0, 1, capacity.nic_slots])) for n in topo.nics}
    unhealthy: frozenset[int] = frozenset()
    if topo.gpus:
        indices = st.sampled_from([g.index for g in topo.gpus])
        unhealthy = draw(st.frozensets(indices, max_size=1))
    return NodeState(gpus, nic_slots, unhealthy_gpus=unhealthy)


@st.composite
def requests(
    draw: st.DrawFn, max_gpus: int, max_nics: int, min_gpus: int = 0, min_nics: int = 0
) -> Request:
    # sampled_from draws uniformly; st.integers leans to the ends of its range.
    gpus = draw(st.sampled_from(range(min_gpus, max(min_gpus, min(max_gpus, 4)) + 1)))
    low = max(min_nics, 0 if gpus else 1)
    rdma = draw(st.sampled_from(range(low, max(low, min(max_nics, 4)) + 1)))
    policy = draw(st.sampled_from(list(TopologyPolicy)))
    if policy is TopologyPolicy.RESTRICTED and gpus and not rdma:
        policy = TopologyPolicy.BEST_EFFORT
    whole = gpus == 0 or draw(st.booleans())
    return Request(
        gpus=gpus,
        core=None if whole else draw(st.one_of(st.none(), st.integers(1, 100))),
        memory_mib=None if whole else draw(st.one_of(st.none(), st.integers(1, 1000))),
        rdma=rdma,
        topology=policy,
        gpu_policy=draw(st.sampled_from(list(GpuPolicy))),
    )
