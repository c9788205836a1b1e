"""The plain recount every accounting test checks against: what a node's assignments hold, GPU
by GPU and NIC by NIC, against what the node has. Written without the product's own counting
(`gpulet.api.share`), so that a mistake there cannot hide here."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable

from gpulet.api.assignment import Assignment
from gpulet.api.share import GpuShare
from gpulet.placement import Capacity
from gpulet.topology import Topology


def over_grants(topo: Topology, assignments: Iterable[Assignment], capacity: Capacity) -> list[str]:
    """What the assignments hold beyond `topo`'s GPUs and NICs (empty: nothing): a whole GPU
    shared, more slices than slots, more than 100% of a GPU's compute or its memory, more
    holders of a NIC than its slots, a GPU or NIC the node does not have."""
    shares: dict[str, list[GpuShare]] = defaultdict(list)
    nics: Counter[str] = Counter()
    for assignment in assignments:
        for c in assignment.containers:
            for g in c.gpus:
                shares[g.uuid].append(g)
            nics.update(c.nics)
    problems: list[str] = []
    for gpu in topo.gpus:
        held = shares.pop(gpu.uuid, [])
        where = f"{topo.node} GPU{gpu.index}"
        if any(g.exclusive for g in held) and len(held) > 1:
            problems.append(f"{where} held whole and by others: {held}")
        if len(held) > capacity.gpu_slots:
            problems.append(f"{where}: {len(held)} holders, {capacity.gpu_slots} slots")
        if sum(g.core for g in held) > 100:
            problems.append(f"{where}: {sum(g.core for g in held)}% of its compute")
        if sum(g.memory_mib for g in held) > gpu.memory_mib:
            problems.append(f"{where}: {sum(g.memory_mib for g in held)} MiB of {gpu.memory_mib}")
    if shares:
        problems.append(f"GPUs {topo.node} does not have: {sorted(shares)}")
    ports = {n.key for n in topo.nics}
    problems += [
        f"{topo.node} NIC {k}: {n} holders" for k, n in nics.items() if n > capacity.nic_slots
    ]
    if set(nics) - ports:
        problems.append(f"NICs {topo.node} does not have: {sorted(set(nics) - ports)}")
    return problems
