"""JSON forms of the engine's inputs and outputs: a node's allocations (`--allocated`),
and a placement as `gpulet place --json` prints it. Schemas: docs/cli.md."""

from __future__ import annotations

from typing import Any

from gpulet.api.share import GpuUsage
from gpulet.placement.engine import NoFit, Placement
from gpulet.placement.request import NodeState
from gpulet.topology import Topology


class StateError(ValueError):
    """An allocations document that cannot be read."""


def _int(value: Any, where: str, low: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise StateError(f"{where}: expected an integer >= {low}, got {value!r}")
    return value


def state_from_json(doc: Any, topo: Topology) -> NodeState:
    """Read `{"gpus": {"<index or uuid>": {"slots", "core", "memory_mib", "exclusive"}},
    "nics": {"<name>": slots}, "unhealthy_gpus": [...], "unhealthy_nics": [...]}`."""
    if not isinstance(doc, dict):
        raise StateError("allocations: expected a JSON object")
    unknown = set(doc) - {"gpus", "nics", "unhealthy_gpus", "unhealthy_nics"}
    if unknown:
        raise StateError(f"allocations: unknown field(s) {', '.join(sorted(unknown))}")
    by_name = {str(g.index): g for g in topo.gpus} | {g.uuid: g for g in topo.gpus}
    nic_keys = {n.key for n in topo.nics}

    def gpu_index(key: Any, where: str) -> int:
        gpu = by_name.get(str(key))
        if gpu is None:
            raise StateError(f"{where}: no GPU {key!r} on node {topo.node}")
        return gpu.index

    def nic_key(key: Any, where: str) -> str:
        if key not in nic_keys:
            raise StateError(f"{where}: no RDMA NIC {key!r} on node {topo.node}")
        return str(key)

    gpus: dict[int, GpuUsage] = {}
    raw_gpus = doc.get("gpus", {})
    if not isinstance(raw_gpus, dict):
        raise StateError("allocations.gpus: expected an object keyed by GPU index or UUID")
    for key, use in raw_gpus.items():
        where = f"allocations.gpus[{key}]"
        index = gpu_index(key, where)
        if not isinstance(use, dict):
            raise StateError(f"{where}: expected an object")
        extra = set(use) - {"slots", "core", "memory_mib", "exclusive"}
        if extra:
            raise StateError(f"{where}: unknown field(s) {', '.join(sorted(extra))}")
        exclusive = use.get("exclusive", False)
        if not isinstance(exclusive, bool):
            raise StateError(f"{where}.exclusive: expected true or false")
        gpu = next(g for g in topo.gpus if g.index == index)
        core = _int(use.get("core", 0), f"{where}.core")
        memory = _int(use.get("memory_mib", 0), f"{where}.memory_mib")
        if core > 100:
            raise StateError(f"{where}.core: {core}% is more than the whole GPU")
        if memory > gpu.memory_mib:
            raise StateError(f"{where}.memory_mib: {memory} MiB is more than GPU{index} has")
        slots = _int(use.get("slots", 0), f"{where}.slots")
        gpus[index] = GpuUsage(slots, core, memory, whole=int(exclusive))
    raw_nics = doc.get("nics", {})
    if not isinstance(raw_nics, dict):
        raise StateError("allocations.nics: expected an object keyed by NIC name")
    nics = {
        nic_key(k, f"allocations.nics[{k}]"): _int(v, f"allocations.nics[{k}]")
        for k, v in raw_nics.items()
    }
    bad_gpus = doc.get("unhealthy_gpus", [])
    bad_nics = doc.get("unhealthy_nics", [])
    if not isinstance(bad_gpus, list) or not isinstance(bad_nics, list):
        raise StateError("allocations: unhealthy_gpus and unhealthy_nics must be lists")
    return NodeState(
        gpus,
        nics,
        frozenset(gpu_index(k, "allocations.unhealthy_gpus") for k in bad_gpus),
        frozenset(nic_key(k, "allocations.unhealthy_nics") for k in bad_nics),
    )


def placement_to_json(result: Placement | NoFit, topo: Topology) -> dict[str, Any]:
    if isinstance(result, NoFit):
        return {"fits": False, "reason": result.reason}
    by_index = {g.index: g for g in topo.gpus}
    by_key = {n.key: n for n in topo.nics}
    return {
        "fits": True,
        "gpus": [
            {
                "index": grant.index,
                "uuid": grant.uuid,
                "pci": by_index[grant.index].pci,
                "numa": by_index[grant.index].numa,
                "switch": by_index[grant.index].switch,
                "core": grant.core,
                "memory_mib": grant.memory_mib,
                "exclusive": grant.exclusive,
            }
            for grant in result.gpus
        ],
        "nics": [
            {
                "name": key,
                "netdev": by_key[key].netdev,
                "pci": by_key[key].pci,
                "numa": by_key[key].numa,
                "switch": by_key[key].switch,
            }
            for key in result.nics
        ],
        "numa": list(result.numa),
        "score": result.score,
        "cost": result.cost_terms(),
    }
