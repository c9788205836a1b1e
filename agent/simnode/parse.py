"""Spec text to NodeSpec: the YAML format of docs/simulated-nodes.md, validated in full.

Pure: no file is read here. Every error is one line naming the place in the spec.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

from agent.simnode.errors import SimulationError
from agent.simnode.fields import (
    Fields,
    as_bool,
    as_cpus,
    as_int,
    as_kib,
    as_list,
    as_text,
    describe,
)
from agent.simnode.parse_tree import TreeReader, read_defaults
from agent.simnode.spec import (
    DEFAULT_CUDA_DRIVER_VERSION,
    DEFAULT_DRIVER_VERSION,
    NodeSpec,
    NumaSpec,
    NvlinkPairSpec,
)
from agent.simnode.values import netdev_name, operstate
from agent.simnode.yamlload import load_yaml

_NODE_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")

_TOP_KEYS = (
    "name",
    "driver_version",
    "cuda_driver_version",
    "numa",
    "defaults",
    "pcie",
    "nvlinks",
    "virtual_netdevs",
)


def parse_spec(text: str, *, source: str = "<spec>", default_name: str = "node") -> NodeSpec:
    """Read a spec; `source` (a file name) prefixes every error message."""
    try:
        spec = spec_from_data(load_yaml(text), default_name=default_name)
    except SimulationError as err:
        raise SimulationError(f"{source}: {err}") from None
    return replace(spec, source=source)


def spec_from_data(data: object, *, default_name: str = "node") -> NodeSpec:
    """Validate an already-loaded spec (a dict as YAML gives it)."""
    top = Fields(data, "top level", _TOP_KEYS, required=("numa", "pcie"))
    name = as_text(top.get("name"), "name") if top.has("name") else default_name
    if not _NODE_NAME.fullmatch(name):
        raise SimulationError(
            f"name: {name!r} is not a Kubernetes node name (lower-case letters, digits, '-', '.')"
        )
    numa = _numa_nodes(top.get("numa"))
    defaults = read_defaults(top.get("defaults"))
    tree = TreeReader(defaults, {n.id for n in numa})
    bridges = tuple(
        tree.host_bridge(value, f"pcie[{i}]") for i, value in enumerate(_nonempty(top, "pcie"))
    )
    pairs = _nvlink_pairs(top.get("nvlinks"))
    _check_endpoints(tree, pairs)
    return NodeSpec(
        name=name,
        driver_version=(
            as_text(top.get("driver_version"), "driver_version")
            if top.has("driver_version")
            else DEFAULT_DRIVER_VERSION
        ),
        cuda_driver_version=(
            as_int(top.get("cuda_driver_version"), "cuda_driver_version", lo=1000)
            if top.has("cuda_driver_version")
            else DEFAULT_CUDA_DRIVER_VERSION
        ),
        numa=numa,
        host_bridges=bridges,
        nvlink_pairs=pairs,
        virtual_netdevs=_virtual_netdevs(top.get("virtual_netdevs")),
    )


def _nonempty(top: Fields, key: str) -> list[Any]:
    items = as_list(top.get(key), key)
    if not items:
        raise SimulationError(f"{key}: must list at least one entry")
    return items


def _numa_nodes(value: object) -> tuple[NumaSpec, ...]:
    nodes: list[NumaSpec] = []
    owner: dict[int, int] = {}
    items = as_list(value, "numa")
    if not items:
        raise SimulationError("numa: must list at least one NUMA node")
    for i, item in enumerate(items):
        f = Fields(item, f"numa[{i}]", ("id", "cpus", "memory"), required=("id", "cpus", "memory"))
        node = NumaSpec(
            id=as_int(f.get("id"), f.at("id"), hi=1023),
            cpus=as_cpus(f.get("cpus"), f.at("cpus")),
            memory_kib=as_kib(f.get("memory"), f.at("memory")),
        )
        if any(n.id == node.id for n in nodes):
            raise SimulationError(f"{f.at('id')}: NUMA node {node.id} is listed twice")
        for cpu in node.cpus:
            if cpu in owner:
                raise SimulationError(
                    f"{f.at('cpus')}: CPU {cpu} is already in NUMA node {owner[cpu]}"
                )
            owner[cpu] = node.id
        nodes.append(node)
    return tuple(nodes)


def _nvlink_pairs(value: object) -> tuple[NvlinkPairSpec, ...]:
    if value is None:
        return ()
    pairs: list[NvlinkPairSpec] = []
    for i, item in enumerate(as_list(value, "nvlinks")):
        where = f"nvlinks[{i}]"
        f = Fields(item, where, ("gpus", "links", "active"), required=("gpus", "links"))
        ends = as_list(f.get("gpus"), f.at("gpus"))
        if len(ends) != 2:
            raise SimulationError(f"{f.at('gpus')}: name two GPU indexes, e.g. [0, 1]")
        a, b = (as_int(v, f"{f.at('gpus')}[{j}]", hi=1023) for j, v in enumerate(ends))
        if a == b:
            raise SimulationError(f"{f.at('gpus')}: a GPU cannot be NVLinked to itself")
        pair = NvlinkPairSpec(
            gpus=(a, b),
            links=as_int(f.get("links"), f.at("links"), lo=1, hi=64),
            active=as_bool(f.get("active"), f.at("active")) if f.has("active") else True,
            where=where,
        )
        for other in pairs:
            if set(other.gpus) == {a, b}:
                raise SimulationError(
                    f"{where}: GPUs {a} and {b} are already paired in {other.where}"
                )
        pairs.append(pair)
    return tuple(pairs)


def _virtual_netdevs(value: object) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise SimulationError(
            f"virtual_netdevs: expected a mapping of name to operstate (ifb0: down), "
            f"got {describe(value)}"
        )
    return tuple(
        (netdev_name(name, "virtual_netdevs"), operstate(state, f"virtual_netdevs.{name}"))
        for name, state in value.items()
    )


def _check_endpoints(tree: TreeReader, pairs: tuple[NvlinkPairSpec, ...]) -> None:
    """What no single entry can check: unique names and indexes, links that fit."""
    _unique("gpu", [(g.index, g.where) for g in tree.gpus])
    _unique("NIC", [(n.name, n.where) for n in tree.nics])
    _unique("nvswitch", [(s.index, s.where) for s in tree.nvswitches])
    _unique("GPU uuid", [(g.uuid, g.where) for g in tree.gpus if g.uuid])
    _unique("GPU minor", [(g.index if g.minor is None else g.minor, g.where) for g in tree.gpus])
    _contiguous("gpu", sorted(g.index for g in tree.gpus))
    _contiguous("nvswitch", sorted(s.index for s in tree.nvswitches))
    indexes = {g.index for g in tree.gpus}
    for pair in pairs:
        for index in pair.gpus:
            if index not in indexes:
                raise SimulationError(f"{pair.where}.gpus: there is no gpu {index}")
    linked = {i for pair in pairs for i in pair.gpus}
    switches = len(tree.nvswitches)
    for gpu in tree.gpus:
        links = gpu.nvswitch_links
        where = f"{gpu.where} (gpu {gpu.index})"
        if isinstance(links, tuple) and len(links) != switches:
            raise SimulationError(
                f"{where}: nvswitch_links lists {len(links)} counts for {switches} NVSwitches"
            )
        if isinstance(links, int) and links and not switches:
            raise SimulationError(f"{where}: {links} NVSwitch links but the spec has no nvswitch")
        if isinstance(links, int) and switches and links % switches:
            raise SimulationError(
                f"{where}: {links} NVSwitch links do not spread evenly over {switches} "
                "NVSwitches; give one count per NVSwitch, e.g. [5, 4, 4, 5]"
            )
        has_links = bool(sum(links) if isinstance(links, tuple) else links) or gpu.index in linked
        if gpu.nvlink_supported is False and has_links:
            raise SimulationError(f"{where}: nvlink_supported is false but the GPU has NVLinks")


def _unique(what: str, keyed: list[tuple[object, str]]) -> None:
    seen: dict[object, str] = {}
    for key, where in keyed:
        if key in seen:
            raise SimulationError(f"{where}: {what} {key} is already at {seen[key]}")
        seen[key] = where


def _contiguous(what: str, indexes: list[int]) -> None:
    for expected, index in enumerate(indexes):
        if index != expected:
            raise SimulationError(
                f"{what} indexes must run 0..{len(indexes) - 1} without gaps; "
                f"{what} {expected} is missing"
            )
