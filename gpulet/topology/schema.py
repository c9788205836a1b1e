"""The topology document's OpenAPI v3 schema, as a NodeTopology's `spec` (the document
without `apiVersion` and `kind`): what the API server validates and prunes a NodeTopology
by. It is written beside the parser (`document.from_document`) and must admit every
document `to_document` writes; tests/unit/test_topology_schema.py checks both against each
other. The bounds keep one object small (a DGX has 8 GPUs and a dozen NICs)."""

from __future__ import annotations

from typing import Any

#: Most GPUs, NICs (ports), NUMA nodes and switches one node may report.
MAX_GPUS = 64
MAX_NICS = 256
MAX_NUMA = 64
MAX_SWITCHES = 256
#: A name, a PCI address, a model; and a CPU list (`0-55,112-167`).
MAX_TEXT = 256
MAX_CPULIST = 4096


def _text(limit: int = MAX_TEXT, *, nullable: bool = False) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string", "maxLength": limit}
    if nullable:
        schema["nullable"] = True
    return schema


def _int(minimum: int | None = None, *, nullable: bool = False) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "integer", "format": "int64"}
    if minimum is not None:
        schema["minimum"] = minimum
    if nullable:
        schema["nullable"] = True
    return schema


def _list(items: dict[str, Any], limit: int) -> dict[str, Any]:
    return {"type": "array", "maxItems": limit, "items": items}


def _object(required: list[str], **properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": properties}


def _location() -> dict[str, dict[str, Any]]:
    """Where a device sits on PCIe: its address, root complex, bridges, top switch."""
    return {
        "pci": _text(),
        "host_bridge": _text(),
        "pcie_path": _list(_text(), 64),
        "switch": _text(nullable=True),
        "numa": _int(-1),
        "cpus": _text(MAX_CPULIST),
    }


_GPU = _object(
    [
        "index",
        "uuid",
        "model",
        "memory_mib",
        "minor",
        "pci",
        "host_bridge",
        "pcie_path",
        "numa",
        "mig",
        "nvswitch_links",
        "nvlink_peers",
    ],
    index=_int(0),
    uuid=_text(),
    model=_text(),
    memory_mib=_int(0),
    minor=_int(0),
    **_location(),
    mig={"type": "boolean"},
    nvswitch_links=_int(0),
    nvlink_peers={"type": "object", "maxProperties": MAX_GPUS, "additionalProperties": _int(0)},
)

_NIC = _object(
    [
        "name",
        "device",
        "port",
        "pci",
        "host_bridge",
        "pcie_path",
        "numa",
        "state",
        "rate_gbps",
        "link_layer",
    ],
    name=_text(),
    device=_text(),
    port=_int(0),
    **_location(),
    netdev=_text(nullable=True),
    state=_text(),
    link=_text(nullable=True),
    rate_gbps={"type": "number", "minimum": 0},
    link_layer=_text(),
    uverbs=_int(0, nullable=True),
)

_NUMA = _object(
    ["id", "cpus", "memory_mib"], id=_int(0), cpus=_text(MAX_CPULIST), memory_mib=_int(0)
)

_SWITCH = _object(
    ["id", "gpus", "nics", "numa"],
    id=_text(),
    gpus=_list(_int(0), MAX_GPUS),
    nics=_list(_text(), MAX_NICS),
    numa=_list(_int(-1), MAX_NUMA),
)

#: The schema of a NodeTopology's `spec`.
SPEC_SCHEMA: dict[str, Any] = _object(
    ["node", "gpus", "nics", "numa"],
    node=_text(253),
    driver=_text(nullable=True),
    gpus=_list(_GPU, MAX_GPUS),
    nics=_list(_NIC, MAX_NICS),
    numa=_list(_NUMA, MAX_NUMA),
    switches=_list(_SWITCH, MAX_SWITCHES),
    # A row per GPU and NIC port, each with a cell per GPU and NIC port.
    links={
        "type": "object",
        "maxProperties": MAX_GPUS + MAX_NICS,
        "additionalProperties": {
            "type": "object",
            "maxProperties": MAX_GPUS + MAX_NICS,
            "additionalProperties": _text(16),
        },
    },
)
