"""Why a request does not fit a node, in words a person can act on."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping

from gpulet.placement.eligibility import Candidates
from gpulet.placement.request import Request, TopologyPolicy
from gpulet.topology import Topology


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _listing(reasons: Mapping[int, object] | Mapping[str, object], prefix: str = "") -> str:
    parts = [f"{prefix}{k} {v}" for k, v in sorted(reasons.items(), key=lambda kv: str(kv[0]))]
    if len(parts) > 6:
        parts = [*parts[:6], f"{len(parts) - 6} more"]
    return ", ".join(parts)


def _gpu_need(req: Request) -> str:
    if req.whole:
        return f"{_plural(req.gpus, 'whole GPU')}"
    # No "%": kube-scheduler uses the reasons it shows in a FailedScheduling event as a printf
    # format, and "10% core" would read "10%!c(MISSING)ore" there.
    core = f"{req.core} percent core" if req.core is not None else "all core"
    memory = f"{req.memory_mib} MiB" if req.memory_mib is not None else "some memory"
    return f"{_plural(req.gpus, 'GPU')} with {core} and {memory} free"


def _free(names: list[str]) -> str:
    return ", ".join(names) if names else "none"


def no_fit_reason(topo: Topology, req: Request, cand: Candidates) -> str:
    if len(cand.gpus) < req.gpus:
        if not topo.gpus:
            return "the node has no GPUs"
        if req.gpus > len(topo.gpus):
            return f"needs {_gpu_need(req)}; the node has {_plural(len(topo.gpus), 'GPU')}"
        return (
            f"needs {_gpu_need(req)}; {len(cand.gpus)} of {len(topo.gpus)} qualify"
            f" ({_listing(cand.gpu_reasons, 'GPU')})"
        )
    if len(cand.nics) < req.rdma:
        if not topo.nics:
            return f"needs {_plural(req.rdma, 'RDMA NIC')}; the node has none"
        if req.rdma > len(topo.nics):
            return f"needs {_plural(req.rdma, 'RDMA NIC')}; the node has {len(topo.nics)}"
        return (
            f"needs {_plural(req.rdma, 'RDMA NIC')}; {len(cand.nics)} of {len(topo.nics)}"
            f" available ({_listing(cand.nic_reasons)})"
        )
    by_index = {g.index: g for g in topo.gpus}
    by_key = {n.key: n for n in topo.nics}
    if req.topology is TopologyPolicy.SINGLE_NUMA:
        counts: dict[int, list[int]] = defaultdict(lambda: [0, 0])
        for i in cand.gpus:
            counts[by_index[i].numa][0] += 1
        for k in cand.nics:
            counts[by_key[k].numa][1] += 1
        best = max(counts.items(), key=lambda kv: (min(kv[1][0], req.gpus), kv[1][1]))
        return (
            f"single-numa: needs {_gpu_need(req)} and {_plural(req.rdma, 'NIC')} on one NUMA"
            f" node; the best is NUMA {best[0]} with {_plural(best[1][0], 'GPU')} and"
            f" {_plural(best[1][1], 'NIC')} free"
        )
    if req.topology is TopologyPolicy.RESTRICTED:
        per_switch: dict[str, tuple[list[str], int]] = {}
        for i in sorted(cand.gpus):
            sw = by_index[i].switch
            if sw is not None:
                per_switch.setdefault(sw, ([], 0))[0].append(f"GPU{i}")
        for k in cand.nics:
            sw = by_key[k].switch
            if sw is not None:
                names, n = per_switch.setdefault(sw, ([], 0))
                per_switch[sw] = (names, n + 1)
        usable = sorted(
            (names for names, nics in per_switch.values() if names and nics),
            key=len,
            reverse=True,
        )
        reachable = sum(len(names) for names in usable[: req.rdma])
        aligned = [n for names in usable for n in names]
        return (
            f"restricted: needs {_gpu_need(req)}, each behind a PCIe switch with one of its"
            f" {_plural(req.rdma, 'NIC')}; with {req.rdma} NIC(s) at most {reachable} can be"
            f" (free GPUs behind a switch with a free NIC: {_free(aligned)})"
        )
    return f"needs {_gpu_need(req)} and {_plural(req.rdma, 'NIC')}; no combination fits"
