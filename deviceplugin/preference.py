"""Which devices GetPreferredAllocation proposes when no assignment names them: whole GPUs
chosen by the placement engine, and RDMA ports close to the GPUs of the same container.

Pure: the node, what is held and what kubelet offers in; device owners (GPU UUIDs or port
keys) out, best first. The caller turns owners into slot IDs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence, Set

from gpulet.placement import GpuUsage, NodeState, Placement, Placer, Request
from gpulet.topology import Gpu, Topology

#: A GPU the engine must not choose.
HELD = GpuUsage(whole=1)


def whole_gpus(
    placer: Placer,
    gpus: Mapping[str, Gpu],
    state: NodeState,
    *,
    size: int,
    offered: Mapping[str, Sequence[str]],
    slots_per_gpu: int,
    sick: Set[int],
    must: Sequence[str],
) -> list[str]:
    """`size` whole GPUs by the placement engine, among `gpus` (shareable ones, by UUID) all of
    whose slots kubelet offers, that nothing holds (`state`) and that are healthy; `must`
    (the GPUs of kubelet's must-include IDs) first, then the engine's, then the rest by
    index."""
    must = [uuid for uuid in must if uuid in gpus]
    free = {
        uuid
        for uuid, slots in offered.items()
        if len(slots) == slots_per_gpu
        and state.gpu(gpus[uuid].index).idle
        and gpus[uuid].index not in sick
    } | set(must)
    blocked = {g.index: HELD for g in placer.topo.gpus if g.uuid not in free}
    placed = placer.place(Request(gpus=max(size, 1)), NodeState(gpus=blocked))
    chosen = [g.uuid for g in placed.gpus] if isinstance(placed, Placement) else []
    by_index = sorted(free, key=lambda uuid: gpus[uuid].index)
    return list(dict.fromkeys([*must, *chosen, *by_index]))


def ports(
    placer: Placer,
    loads: Mapping[str, int],
    *,
    size: int,
    usable: Set[str],
    near: Set[int],
    must: Sequence[str],
) -> list[str]:
    """`size` RDMA ports by the placement engine among `usable` ones, weighed by their
    `loads`: close to the GPUs `near` (by index) when there are any, else by load and order
    alone; `must` first, then the engine's, then the rest in the node's order."""
    topo: Topology = placer.topo
    closed = frozenset(n.key for n in topo.nics if n.key not in usable)
    chosen: list[str] = []
    if near:
        held = {g.index: HELD for g in topo.gpus if g.index not in near}
        state = NodeState(gpus=held, nic_slots=loads, unhealthy_nics=closed)
        placed = placer.place(Request(gpus=len(near), rdma=max(size, 1)), state)
        if isinstance(placed, Placement):
            chosen = list(placed.nics)
    if not chosen:
        state = NodeState(nic_slots=loads, unhealthy_nics=closed)
        placed = placer.place(Request(gpus=0, rdma=max(size, 1)), state)
        if isinstance(placed, Placement):
            chosen = list(placed.nics)
    rest = [n.key for n in topo.nics if n.key in usable]
    return list(dict.fromkeys([*must, *chosen, *rest]))
