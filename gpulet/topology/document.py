"""The versioned JSON document a node publishes: its `NodeTopology`'s spec (the previous
release kept it in the Node annotation `gpulet.io/topology`).

`to_document` and `from_document` are inverse; `from_document` validates and raises
`DocumentError` naming the first bad field, so a malformed annotation never turns into a
half-built topology. Schema: docs/topology-document.md.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from gpulet.topology.cpulist import format_cpulist, parse_cpulist
from gpulet.topology.model import Gpu, Nic, NumaNode, PcieLocation, Topology

API_VERSION = "gpulet.io/v1"
KIND = "NodeTopology"


class DocumentError(ValueError):
    """A topology document that cannot be read."""


def to_document(topo: Topology) -> dict[str, Any]:
    numa_cpus = {n.id: format_cpulist(n.cpus) for n in topo.numa_nodes}
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "node": topo.node,
        "driver": topo.driver,
        "gpus": [
            {
                "index": g.index,
                "uuid": g.uuid,
                "model": g.model,
                "memory_mib": g.memory_mib,
                "minor": g.minor,
                "pci": g.pci,
                "host_bridge": g.location.host_bridge,
                "pcie_path": list(g.location.bridges),
                "switch": g.switch,
                "numa": g.numa,
                "cpus": numa_cpus.get(g.numa, ""),
                "mig": g.mig,
                "nvswitch_links": g.nvswitch_links,
                "nvlink_peers": {str(p): c for p, c in g.nvlink_peers},
            }
            for g in topo.gpus
        ],
        "nics": [
            {
                "name": n.key,
                "device": n.name,
                "port": n.port,
                "pci": n.pci,
                "host_bridge": n.location.host_bridge,
                "pcie_path": list(n.location.bridges),
                "switch": n.switch,
                "numa": n.numa,
                "cpus": numa_cpus.get(n.numa, ""),
                "netdev": n.netdev,
                "state": n.state,
                "link": n.link,
                "rate_gbps": n.rate_gbps,
                "link_layer": n.link_layer,
                "uverbs": n.uverbs,
            }
            for n in topo.nics
        ],
        "numa": [
            {"id": n.id, "cpus": format_cpulist(n.cpus), "memory_mib": n.memory_mib}
            for n in topo.numa_nodes
        ],
        "switches": [
            {
                "id": sw,
                "gpus": [g.index for g in gpus],
                "nics": [n.key for n in nics],
                "numa": sorted({g.numa for g in gpus} | {n.numa for n in nics}),
            }
            for sw, (gpus, nics) in sorted(topo.switches().items())
        ],
        "links": {a: dict(row) for a, row in topo.links.items()},
    }


def dumps(topo: Topology) -> str:
    return json.dumps(to_document(topo), sort_keys=False, separators=(",", ":"))


def _req(obj: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in obj:
        raise DocumentError(f"{where}: missing field {key!r}")
    value = obj[key]
    if isinstance(value, bool) and kind is int:
        raise DocumentError(f"{where}.{key}: expected an integer, got {value!r}")
    if not isinstance(value, kind):
        raise DocumentError(f"{where}.{key}: expected {_kind_name(kind)}, got {value!r}")
    return value


def _opt(obj: Mapping[str, Any], key: str, kind: type, where: str) -> Any:
    if obj.get(key) is None:
        return None
    return _req(obj, key, kind, where)


def _check_uverbs(nics: list[Nic]) -> None:
    """One uverbs number per RDMA device (all its ports), and no two devices on one."""
    device_of: dict[int, str] = {}
    number_of: dict[str, int | None] = {}
    for n in nics:
        if number_of.setdefault(n.name, n.uverbs) != n.uverbs:
            raise DocumentError(f"nics: the ports of {n.name} name different uverbs devices")
        if n.uverbs is None:
            continue
        if n.uverbs < 0:
            raise DocumentError(f"nics: {n.key}: uverbs {n.uverbs} is negative")
        other = device_of.setdefault(n.uverbs, n.name)
        if other != n.name:
            raise DocumentError(f"nics: uverbs{n.uverbs} is both {other} and {n.name}")


def _kind_name(kind: type | tuple[type, ...]) -> str:
    if isinstance(kind, tuple):
        return " or ".join(k.__name__ for k in kind)
    return kind.__name__


def _location(obj: Mapping[str, Any], where: str) -> PcieLocation:
    path = _req(obj, "pcie_path", list, where)
    if not all(isinstance(p, str) for p in path):
        raise DocumentError(f"{where}.pcie_path: expected a list of PCI addresses")
    return PcieLocation(
        pci=_req(obj, "pci", str, where),
        host_bridge=_req(obj, "host_bridge", str, where),
        bridges=tuple(path),
    )


def from_document(doc: Any) -> Topology:
    """Rebuild a Topology from a parsed document; the link matrix is recomputed and must
    equal the published one (a mismatch means the publisher and reader disagree)."""
    if not isinstance(doc, dict):
        raise DocumentError("topology document: expected a JSON object")
    version = doc.get("apiVersion")
    if version != API_VERSION:
        raise DocumentError(
            f"topology document: apiVersion {version!r} is not supported (want {API_VERSION!r})"
        )
    gpus: list[Gpu] = []
    for i, g in enumerate(_req(doc, "gpus", list, "topology")):
        where = f"gpus[{i}]"
        if not isinstance(g, dict):
            raise DocumentError(f"{where}: expected an object")
        peers = _req(g, "nvlink_peers", dict, where)
        try:
            nvlink_peers = tuple(sorted((int(k), int(v)) for k, v in peers.items()))
        except (TypeError, ValueError):
            raise DocumentError(f"{where}.nvlink_peers: expected {{index: count}}") from None
        gpus.append(
            Gpu(
                index=_req(g, "index", int, where),
                uuid=_req(g, "uuid", str, where),
                model=_req(g, "model", str, where),
                memory_mib=_req(g, "memory_mib", int, where),
                minor=_req(g, "minor", int, where),
                location=_location(g, where),
                numa=_req(g, "numa", int, where),
                mig=_req(g, "mig", bool, where),
                nvswitch_links=_req(g, "nvswitch_links", int, where),
                nvlink_peers=nvlink_peers,
            )
        )
    nics: list[Nic] = []
    for i, n in enumerate(_req(doc, "nics", list, "topology")):
        where = f"nics[{i}]"
        if not isinstance(n, dict):
            raise DocumentError(f"{where}: expected an object")
        nics.append(
            Nic(
                name=_req(n, "device", str, where),
                port=_req(n, "port", int, where),
                location=_location(n, where),
                numa=_req(n, "numa", int, where),
                netdev=_opt(n, "netdev", str, where),
                state=_req(n, "state", str, where),
                link=_opt(n, "link", str, where),
                rate_gbps=float(_req(n, "rate_gbps", (int, float), where)),
                link_layer=_req(n, "link_layer", str, where),
                uverbs=_opt(n, "uverbs", int, where),
            )
        )
    numa: list[NumaNode] = []
    for i, m in enumerate(_req(doc, "numa", list, "topology")):
        where = f"numa[{i}]"
        if not isinstance(m, dict):
            raise DocumentError(f"{where}: expected an object")
        try:
            cpus = parse_cpulist(_req(m, "cpus", str, where))
        except ValueError as e:
            raise DocumentError(f"{where}.cpus: {e}") from None
        numa.append(NumaNode(_req(m, "id", int, where), cpus, _req(m, "memory_mib", int, where)))
    if len({g.index for g in gpus}) != len(gpus):
        raise DocumentError("gpus: duplicate GPU index")
    if len({n.key for n in nics}) != len(nics):
        raise DocumentError("nics: duplicate NIC name")
    _check_uverbs(nics)
    topo = Topology.build(
        node=_req(doc, "node", str, "topology"),
        gpus=gpus,
        nics=nics,
        numa_nodes=numa,
        driver=_opt(doc, "driver", str, "topology"),
    )
    published = doc.get("links")
    if published is not None and published != {a: dict(r) for a, r in topo.links.items()}:
        raise DocumentError("links: the published matrix does not match the PCIe tree and NVLinks")
    return topo


def loads(text: str) -> Topology:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise DocumentError(f"topology document is not JSON: {e}") from None
    return from_document(doc)
