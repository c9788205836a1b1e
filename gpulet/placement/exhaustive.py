"""The objective evaluated straight from the link matrix, and a search over every choice.

This is the definition the fast engine is checked against (tests compare the two on random
node states), and the engine's fallback for a node whose links do not nest (an NVLink mesh
that crosses PCIe switches, say), where the tree search does not apply.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import combinations

from gpulet.placement.cost import NIC_RANK, pack, pair_cost
from gpulet.placement.eligibility import Candidates
from gpulet.placement.locality import group_of
from gpulet.placement.request import GpuPolicy, NodeState, Request, TopologyPolicy
from gpulet.topology import Gpu, Topology, nvlink_count


def best_nv(topo: Topology) -> int:
    """The most NVLinks joining any GPU pair on the node."""
    counts = [nvlink_count(topo.link(a.name, b.name)) for a in topo.gpus for b in topo.gpus]
    return max(counts, default=0)


def evaluate(
    topo: Topology,
    req: Request,
    state: NodeState,
    cand: Candidates,
    *,
    gpus: tuple[int, ...],
    nics: tuple[str, ...],
    nv: int | None = None,
) -> int | None:
    """The packed cost of one choice, or None where it breaks a hard rule. `nv` is the
    node's `best_nv`, computed here when not given."""
    by_index = {g.index: g for g in topo.gpus}
    by_key = {n.key: n for n in topo.nics}
    chosen_g = [by_index[i] for i in gpus]
    chosen_n = [by_key[k] for k in nics]
    numas = {d.numa for d in chosen_g} | {n.numa for n in chosen_n}
    if req.topology is TopologyPolicy.SINGLE_NUMA and len(numas) > 1:
        return None
    if req.topology is TopologyPolicy.RESTRICTED:
        switches = {n.switch for n in chosen_n}
        if any(g.switch is None or g.switch not in switches for g in chosen_g):
            return None
    cost = pack(numa=len(numas))
    if chosen_g and chosen_n:
        for g in chosen_g:
            cost += pack(align=min(NIC_RANK[topo.link(g.name, n.key)] for n in chosen_n))
        for n in chosen_n:
            cost += pack(align=min(NIC_RANK[topo.link(n.key, g.name)] for g in chosen_g))
    if nv is None:
        nv = best_nv(topo)
    for a, b in combinations(chosen_g, 2):
        cost += pair_cost(topo.link(a.name, b.name), nv)
    for i in gpus:
        cost += cand.gpus[i][1]
    for k in nics:
        cost += cand.nics[k]
    if req.gpu_policy is GpuPolicy.BINPACK and chosen_g:
        levels: tuple[tuple[str, Callable[[Gpu], object]], ...] = (
            ("numa_broken", lambda g: g.numa),
            ("group_broken", lambda g: group_of(g.location)),
        )
        for field, level in levels:
            touched = {level(g) for g in chosen_g}
            pristine = [
                key
                for key in touched
                if all(state.gpu(g.index).idle for g in topo.gpus if level(g) == key)
            ]
            cost += pack(**{field: len(pristine)})
    return cost


def search(
    topo: Topology, req: Request, state: NodeState, cand: Candidates, nv: int | None = None
) -> tuple[int, tuple[int, ...], tuple[str, ...]] | None:
    """The cheapest choice over every subset of eligible GPUs and NICs (first on ties)."""
    if nv is None:
        nv = best_nv(topo)
    best: tuple[int, tuple[int, ...], tuple[str, ...]] | None = None
    for gpus in combinations(sorted(cand.gpus), req.gpus):
        for nics in combinations(sorted(cand.nics), req.rdma):
            cost = evaluate(topo, req, state, cand, gpus=gpus, nics=nics, nv=nv)
            if cost is not None and (best is None or cost < best[0]):
                best = (cost, gpus, nics)
    return best
