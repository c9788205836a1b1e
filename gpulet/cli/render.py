"""Plain-text views of a topology, a placement and a container's region, for people."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gpulet.topology import Topology, format_cpulist
from gpulet.topology.document import to_document
from native.region import MIB, Usage


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def topology_text(topo: Topology) -> str:
    doc = to_document(topo)
    out = [f"node {topo.node}  driver {topo.driver or '-'}", ""]
    gpu_rows = [["GPU", "MODEL", "MEMORY", "PCI", "NUMA", "SWITCH", "UUID"]]
    for g in doc["gpus"]:
        gpu_rows.append(
            [
                f"GPU{g['index']}",
                g["model"],
                f"{g['memory_mib']} MiB",
                g["pci"],
                str(g["numa"]),
                g["switch"] or "-",
                g["uuid"],
            ]
        )
    out += [_table(gpu_rows), ""]
    if doc["nics"]:
        nic_rows = [["NIC", "VERBS", "NETDEV", "STATE", "LINK", "RATE", "PCI", "NUMA", "SWITCH"]]
        for n in doc["nics"]:
            verbs = n.get("uverbs")
            nic_rows.append(
                [
                    n["name"],
                    "-" if verbs is None else f"uverbs{verbs}",
                    n["netdev"] or "-",
                    n["state"],
                    n["link"] or "-",
                    f"{n['rate_gbps']:g} Gb/s {n['link_layer']}",
                    n["pci"],
                    str(n["numa"]),
                    n["switch"] or "-",
                ]
            )
        out += [_table(nic_rows), ""]
    else:
        out += ["no RDMA NICs", ""]
    numa_rows = [["NUMA", "CPUS", "MEMORY"]]
    numa_rows += [[str(m["id"]), m["cpus"], f"{m['memory_mib']} MiB"] for m in doc["numa"]]
    out += [_table(numa_rows), ""]
    if doc["switches"]:
        sw_rows = [["SWITCH", "NUMA", "GPUS", "NICS"]]
        for s in doc["switches"]:
            sw_rows.append(
                [
                    s["id"],
                    ",".join(map(str, s["numa"])),
                    ",".join(f"GPU{i}" for i in s["gpus"]) or "-",
                    ",".join(s["nics"]) or "-",
                ]
            )
        out += [_table(sw_rows), ""]
    out += [matrix_text(topo), "", legend_text()]
    return "\n".join(out)


def matrix_text(topo: Topology) -> str:
    """The link matrix laid out as `nvidia-smi topo -m` lays it out."""
    names = [g.name for g in topo.gpus] + [n.key for n in topo.nics]
    numa_of = {g.name: g.numa for g in topo.gpus} | {n.key: n.numa for n in topo.nics}
    cpus = {n.id: format_cpulist(n.cpus) for n in topo.numa_nodes}
    rows = [["", *names, "CPU Affinity", "NUMA Affinity"]]
    for a in names:
        cells = [" X " if a == b else topo.link(a, b) for b in names]
        rows.append([a, *cells, cpus.get(numa_of[a], "-"), str(numa_of[a])])
    return _table(rows)


#: The link classes under the matrix, as `nvidia-smi topo -m` prints its legend, in the
#: meanings gpulet gives them (docs/topology-document.md).
LEGEND = (
    ("X", "Self"),
    (
        "NV#",
        "Connection traversing a bonded set of # NVLinks (direct links plus, when both GPUs "
        "are on an NVSwitch fabric, the smaller of their fabric link counts)",
    ),
    ("PIX", "Connection traversing at most a single PCIe switch"),
    ("PXB", "Connection traversing multiple PCIe switches (without a PCIe host bridge)"),
    (
        "PHB",
        "Connection traversing PCIe and a PCIe host bridge (different root ports of one bridge)",
    ),
    ("NODE", "Connection traversing PCIe and the links between host bridges of one NUMA node"),
    ("SYS", "Connection traversing PCIe and the link between NUMA nodes (e.g. QPI/UPI)"),
)


def legend_text() -> str:
    return "\n".join(["Legend:", ""] + [f"  {code:<4} = {meaning}" for code, meaning in LEGEND])


def _n(count: int, one: str, many: str) -> str:
    return f"{count} {one if count == 1 else many}"


def cost_lines(cost: Mapping[str, int], gpu_policy: str) -> list[str]:
    """A placement's cost terms (gpulet.placement.cost) in words, the ones that cost
    something; the tie-break on device numbers is left out."""
    c = {k: v for k, v in cost.items() if v}
    lines = []
    if "align" in c:
        lines.append(
            f"GPU-NIC distance {c['align']} (each GPU and NIC to its nearest partner: "
            "PIX 0, PXB 1, PHB 2, NODE 3, SYS 4)"
        )
    if "pair_class" in c:
        lines.append(
            f"GPU-GPU distance {c['pair_class']} (each pair: NVLink 0, PIX 1, PXB 2, PHB 3, "
            "NODE 4, SYS 5)"
        )
    if "nv_deficit" in c:
        lines.append(f"{_n(c['nv_deficit'], 'NVLink', 'NVLinks')} fewer than the best-linked pairs")
    if c.get("numa", 0) > 1:
        lines.append(f"GPUs and NICs on {c['numa']} NUMA nodes")
    if "touched" in c:
        lines.append(f"{_n(c['touched'], 'idle GPU', 'idle GPUs')} put to use")
    if "numa_broken" in c:
        k = c["numa_broken"]
        lines.append(
            f"first GPUs taken on {_n(k, 'NUMA node', 'NUMA nodes')} "
            f"({'its' if k == 1 else 'their'} GPUs were all idle)"
        )
    if "group_broken" in c:
        k = c["group_broken"]
        lines.append(
            f"first GPUs taken behind {_n(k, 'PCIe switch', 'PCIe switches')} or root port"
            f"{'' if k == 1 else 's'} ({'its' if k == 1 else 'their'} GPUs were all idle)"
        )
    if "fit" in c:
        kind = "left free" if gpu_policy == "binpack" else "already used"
        lines.append(f"core % + memory % {kind} on the chosen GPUs: {c['fit']}")
    if "nic_load" in c:
        lines.append(f"{_n(c['nic_load'], 'slot', 'slots')} already used on the chosen NICs")
    return lines


def usage_text(usage: Usage) -> str:
    """Per device: charge against cap, core share, measured utilisation, time throttled;
    per attached process: its charge on each device."""
    dev_rows = [["DEV", "UUID", "USED MiB", "CAP MiB", "CORE", "UTIL", "THROTTLED"]]
    for i, d in enumerate(usage.devices):
        util = "-" if d.util_percent is None else f"{d.util_percent:.1f}%"
        dev_rows.append(
            [
                str(i),
                d.uuid,
                f"{d.used_bytes / MIB:.1f}",
                str(d.memory_bytes // MIB),
                f"{d.core_percent}%",
                util,
                f"{d.throttled_ns / 1e9:.1f} s",
            ]
        )
    out = [_table(dev_rows), ""]
    if not usage.processes:
        out.append("no process attached")
        return "\n".join(out)
    proc_rows = [["PID", "COMM", *(f"DEV{i} MiB" for i in range(len(usage.devices)))]]
    for p in usage.processes:
        proc_rows.append([str(p.pid), p.comm or "-", *(f"{b / MIB:.1f}" for b in p.used_bytes)])
    out.append(_table(proc_rows))
    return "\n".join(out)


def allocations_text(doc: Mapping[str, Any]) -> str:
    """`gpulet node allocations`: per GPU and port, who has what, and live use."""

    def mib(value: object) -> str:
        return "-" if value is None else f"{value} MiB"

    lines = [f"node {doc['node']}"]
    for g in doc["gpus"]:
        a = g["allocated"]
        health = "" if g["healthy"] else "  UNHEALTHY"
        sm = "-" if g["utilization"] is None else g["utilization"]
        b = g.get("batch") or {}
        borrowed = (
            f", batch {b['core']}% core, {b['memory_mib']} MiB"
            if b.get("core") or b.get("memory_mib")
            else ""
        )
        lines.append(
            f"GPU{g['index']} {g['uuid']} NUMA {g['numa']}{health}: allocated {a['core']}% core, "
            f"{a['memory_mib']} of {g['memory_mib']} MiB, {a['slots']} slots{borrowed}; "
            f"in use {mib(g['used_mib'])}, {sm}% SM"
        )
        for c in g["containers"]:
            share = "whole" if c["exclusive"] else f"{c['core']}% core, {c['memory_mib']} MiB"
            if c.get("class") == "batch":
                share = f"floor {c['core']}% core, cap {c['memory_mib']} MiB"
            util = "-" if c["utilization"] is None else f"{c['utilization']:g}%"
            lines.append(
                f"  {c.get('class', 'production'):<10} "
                f"{c['namespace'] or '?'}/{c['pod'] or c['pod_uid']} {c['container']}: "
                f"{share}; using {mib(c['used_mib'])}, {util} SM"
            )
    for n in doc["nics"]:
        health = "" if n["healthy"] else "  DOWN"
        lines.append(f"{n['key']} NUMA {n['numa']}{health}: {n['slots']} slots")
        for c in n["containers"]:
            lines.append(f"  {c['namespace'] or '?'}/{c['pod'] or c['pod_uid']} {c['container']}")
    return "\n".join(lines)
