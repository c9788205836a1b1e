"""The `pcie` section of a spec: host bridges, root ports, switches and endpoints.

Each endpoint reads its attributes, falling back to `defaults.<kind>` and then to
built-in defaults. Pure; errors are one line naming the place (`pcie[0].devices[1]`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, cast

from agent.simnode.bdf import Bdf
from agent.simnode.errors import SimulationError
from agent.simnode.fields import Fields, as_bdf, as_bool, as_int, as_list, as_text, describe
from agent.simnode.spec import (
    Auto,
    DeviceSpec,
    FunctionSpec,
    GpuSpec,
    HostBridgeSpec,
    NicSpec,
    NvSwitchSpec,
    PciSpec,
    PortSpec,
    RootPortSpec,
    SwitchSpec,
)
from agent.simnode.values import (
    gpu_uuid,
    link_layer,
    nvswitch_links,
    operstate,
    optional_netdev,
    pci_class,
    pci_id,
    port_state,
    rate,
    size_bytes,
)

T = TypeVar("T")
Reader = Callable[[object, str], Any]

_RDMA_NAME = re.compile(r"[A-Za-z0-9_.-]{1,63}")

#: Per kind: the attributes `defaults.<kind>` may set, with their readers.
DEFAULT_READERS: dict[str, dict[str, Reader]] = {
    "gpu": {
        "model": as_text,
        "memory": size_bytes,
        "device": pci_id,
        "nvswitch_links": nvswitch_links,
        "nvlink_supported": as_bool,
        "mig": as_bool,
    },
    "nic": {
        "device": pci_id,
        "state": port_state,
        "rate": rate,
        "link_layer": link_layer,
        "operstate": operstate,
    },
    "root_port": {"vendor": pci_id, "device": pci_id},
    "switch": {"vendor": pci_id, "device": pci_id},
    "nvswitch": {"device": pci_id},
}

#: Defaults before the spec's own: ConnectX-6 HDR InfiniBand NICs, AMD root ports,
#: Broadcom PEX88000 switches, A100-generation NVSwitches. GPUs have no model default.
BUILTIN_DEFAULTS: dict[str, dict[str, object]] = {
    "gpu": {"nvswitch_links": 0, "mig": False},
    "nic": {
        "device": 0x101B,
        "state": "ACTIVE",
        "rate": "200 Gb/sec (4X HDR)",
        "link_layer": "InfiniBand",
    },
    "root_port": {"vendor": 0x1022, "device": 0x1483},
    "switch": {"vendor": 0x1000, "device": 0xC010},
    "nvswitch": {"device": 0x1AF1},
}

_PORT_KEYS = ("netdev", "state", "rate", "link_layer", "operstate")
_KEYS: dict[str, tuple[str, ...]] = {
    "gpu": ("gpu", "bdf", "uuid", "minor", *DEFAULT_READERS["gpu"]),
    "nic": ("nic", "bdf", "device", "ports", *_PORT_KEYS),
    "nvswitch": ("nvswitch", "bdf", "device"),
    "pci": ("pci", "bdf", "class", "vendor", "device", "netdev"),
    "card": ("card", "bdf"),
    "switch": ("switch", "bdf", "vendor", "device"),
    "root_port": ("root_port", "bdf", "vendor", "device"),
}
_FUNCTION_KINDS = ("gpu", "nic", "nvswitch", "pci")


def read_defaults(value: object) -> dict[str, dict[str, object]]:
    """`defaults` merged over the built-in defaults, each value already read."""
    merged = {kind: dict(values) for kind, values in BUILTIN_DEFAULTS.items()}
    if value is None:
        return merged
    sections = Fields(value, "defaults", DEFAULT_READERS)
    for kind, readers in DEFAULT_READERS.items():
        if sections.has(kind):
            f = Fields(sections.get(kind), sections.at(kind), readers)
            merged[kind].update({key: readers[key](v, f.at(key)) for key, v in f.data.items()})
    return merged


class _Item:
    """One endpoint's mapping, falling back to `defaults.<kind>` for what it does not say."""

    def __init__(self, fields: Fields, kind: str, defaults: Mapping[str, object]) -> None:
        self.fields = fields
        self.kind = kind
        self.defaults = defaults

    def value(self, key: str, reader: Callable[[object, str], T]) -> T:
        if self.fields.has(key):
            return reader(self.fields.get(key), self.fields.at(key))
        if key in self.defaults:
            return cast(T, self.defaults[key])
        raise SimulationError(
            f"{self.fields.where}: missing key {key!r} (give it here or in defaults.{self.kind})"
        )

    def optional(self, key: str, reader: Callable[[object, str], T]) -> T | None:
        if self.fields.has(key) or key in self.defaults:
            return self.value(key, reader)
        return None


class TreeReader:
    """Reads the `pcie` section, collecting every endpoint for the cross-checks."""

    def __init__(self, defaults: dict[str, dict[str, object]], numa_ids: set[int]) -> None:
        self.defaults = defaults
        self.numa_ids = numa_ids
        self.gpus: list[GpuSpec] = []
        self.nics: list[NicSpec] = []
        self.nvswitches: list[NvSwitchSpec] = []
        self.bridges: dict[str, str] = {}

    def host_bridge(self, value: object, where: str) -> HostBridgeSpec:
        f = Fields(
            value,
            where,
            ("host_bridge", "domain", "numa", "devices"),
            required=("host_bridge", "numa", "devices"),
        )
        numa = as_int(f.get("numa"), f.at("numa"), lo=-1, hi=1023)
        if numa != -1 and numa not in self.numa_ids:
            known = ", ".join(str(n) for n in sorted(self.numa_ids))
            raise SimulationError(
                f"{f.at('numa')}: NUMA node {numa} is not in the numa list ({known}; or -1)"
            )
        devices = as_list(f.get("devices"), f.at("devices"))
        if not devices:
            raise SimulationError(f"{f.at('devices')}: a host bridge needs at least one device")
        bridge = HostBridgeSpec(
            domain=as_int(f.get("domain") or 0, f.at("domain"), hi=0xFFFF_FFFF),
            bus=as_int(f.get("host_bridge"), f.at("host_bridge"), hi=0xFF),
            numa=numa,
            children=tuple(
                self.root_bus_child(v, f"{where}.devices[{i}]") for i, v in enumerate(devices)
            ),
            where=where,
        )
        if bridge.name in self.bridges:
            raise SimulationError(
                f"{where}: host bridge {bridge.name} is already {self.bridges[bridge.name]}"
            )
        self.bridges[bridge.name] = where
        return bridge

    def root_bus_child(self, value: object, where: str) -> RootPortSpec | DeviceSpec:
        kind = _kind(value, where, ("root_port", "card", *_FUNCTION_KINDS))
        if kind == "root_port":
            return self.root_port(value, where)
        return self.device(kind, value, where)

    def below_port(self, value: object, where: str) -> SwitchSpec | DeviceSpec:
        kind = _kind(value, where, ("switch", "card", *_FUNCTION_KINDS))
        if kind == "switch":
            return self.switch(value, where)
        return self.device(kind, value, where)

    def root_port(self, value: object, where: str) -> RootPortSpec:
        f = Fields(value, where, _KEYS["root_port"])
        item = _Item(f, "root_port", self.defaults["root_port"])
        child = f.get("root_port")
        return RootPortSpec(
            vendor=item.value("vendor", pci_id),
            device_id=item.value("device", pci_id),
            child=None if child is None else self.below_port(child, f.at("root_port")),
            bdf=_bdf(f),
            where=where,
        )

    def switch(self, value: object, where: str) -> SwitchSpec:
        f = Fields(value, where, _KEYS["switch"])
        item = _Item(f, "switch", self.defaults["switch"])
        children = as_list(f.get("switch"), f.at("switch"))
        if not children:
            raise SimulationError(f"{f.at('switch')}: a switch needs at least one device below it")
        return SwitchSpec(
            vendor=item.value("vendor", pci_id),
            device_id=item.value("device", pci_id),
            children=tuple(
                self.below_port(v, f"{where}.switch[{i}]") for i, v in enumerate(children)
            ),
            bdf=_bdf(f),
            where=where,
        )

    def device(self, kind: str, value: object, where: str) -> DeviceSpec:
        if kind != "card":
            f = Fields(value, where, _KEYS[kind])
            return DeviceSpec((self.function(kind, f),), _bdf(f), where)
        f = Fields(value, where, _KEYS["card"])
        items = as_list(f.get("card"), f.at("card"))
        if not 1 <= len(items) <= 8:
            raise SimulationError(f"{f.at('card')}: a card has 1 to 8 functions, not {len(items)}")
        functions: list[FunctionSpec] = []
        for i, item in enumerate(items):
            at = f"{where}.card[{i}]"
            fn_kind = _kind(item, at, _FUNCTION_KINDS)
            fn_fields = Fields(item, at, _KEYS[fn_kind])
            if fn_fields.has("bdf"):
                raise SimulationError(
                    f"{at}.bdf: a card's functions are numbered .0, .1, ... in order; "
                    "give the card's bdf instead"
                )
            functions.append(self.function(fn_kind, fn_fields))
        return DeviceSpec(tuple(functions), _bdf(f), where)

    def function(self, kind: str, f: Fields) -> FunctionSpec:
        if kind == "gpu":
            return self.gpu(f)
        if kind == "nic":
            return self.nic(f)
        if kind == "nvswitch":
            item = _Item(f, "nvswitch", self.defaults["nvswitch"])
            nvswitch = NvSwitchSpec(
                index=as_int(f.get("nvswitch"), f.at("nvswitch"), hi=63),
                device_id=item.value("device", pci_id),
                where=f.where,
            )
            self.nvswitches.append(nvswitch)
            return nvswitch
        return _pci(f)

    def gpu(self, f: Fields) -> GpuSpec:
        item = _Item(f, "gpu", self.defaults["gpu"])
        gpu = GpuSpec(
            index=as_int(f.get("gpu"), f.at("gpu"), hi=1023),
            model=item.value("model", as_text),
            memory_bytes=item.value("memory", size_bytes),
            device_id=item.value("device", pci_id),
            uuid=item.optional("uuid", gpu_uuid),
            minor=item.optional("minor", _minor),
            mig=item.value("mig", as_bool),
            nvswitch_links=item.value("nvswitch_links", nvswitch_links),
            nvlink_supported=item.optional("nvlink_supported", as_bool),
            where=f.where,
        )
        self.gpus.append(gpu)
        return gpu

    def nic(self, f: Fields) -> NicSpec:
        item = _Item(f, "nic", self.defaults["nic"])
        name = as_text(f.get("nic"), f.at("nic"))
        if not _RDMA_NAME.fullmatch(name):
            raise SimulationError(f"{f.at('nic')}: {name!r} is not an RDMA device name")
        base = PortSpec(
            netdev=_netdev(f),
            state=item.value("state", port_state),
            rate=item.value("rate", rate),
            link_layer=item.value("link_layer", link_layer),
            operstate=item.optional("operstate", operstate),
        )
        ports: tuple[PortSpec, ...] = (base,)
        if f.has("ports"):
            if f.has("netdev"):
                raise SimulationError(
                    f"{f.at('netdev')}: a NIC with ports names a netdev in each port instead"
                )
            items = as_list(f.get("ports"), f.at("ports"))
            if not items:
                raise SimulationError(f"{f.at('ports')}: list at least one port")
            ports = tuple(_port(v, f"{f.at('ports')}[{i}]", base) for i, v in enumerate(items))
        nic = NicSpec(name=name, device_id=item.value("device", pci_id), ports=ports, where=f.where)
        self.nics.append(nic)
        return nic


def _kind(value: object, where: str, allowed: tuple[str, ...]) -> str:
    """Which one of the kind keys (`gpu`, `switch`, ...) a tree entry has."""
    if not isinstance(value, dict):
        raise SimulationError(
            f"{where}: expected a mapping with one of {', '.join(allowed)}, got {describe(value)}"
        )
    kinds: list[str] = [key for key in value if key in _KEYS]
    if len(kinds) > 1:
        raise SimulationError(f"{where}: one entry is one thing, not {' and '.join(kinds)}")
    if not kinds:
        raise SimulationError(f"{where}: expected one of {', '.join(allowed)} as a key")
    kind = kinds[0]
    if kind not in allowed:
        if "card" not in allowed:
            raise SimulationError(f"{where}: a {kind} cannot be a function of a card")
        if kind == "switch":
            raise SimulationError(
                f"{where}: a switch hangs below a root port (root_port: {{switch: [...]}})"
            )
        raise SimulationError(f"{where}: a root port sits only on a host bridge's root bus")
    return kind


def _bdf(f: Fields) -> Bdf | None:
    return as_bdf(f.get("bdf"), f.at("bdf")) if f.has("bdf") else None


def _netdev(f: Fields) -> str | Auto | None:
    """A port's netdev: derived when not given, none when given as null."""
    if not f.has("netdev"):
        return Auto.AUTO
    return optional_netdev(f.get("netdev"), f.at("netdev"))


def _minor(value: object, where: str) -> int:
    return as_int(value, where, hi=255)


def _pci(f: Fields) -> PciSpec:
    missing = [key for key in ("class", "vendor", "device") if not f.has(key)]
    if missing:
        raise SimulationError(f"{f.where}: missing key {missing[0]!r}")
    return PciSpec(
        label=as_text(f.get("pci"), f.at("pci")),
        class_code=pci_class(f.get("class"), f.at("class")),
        vendor=pci_id(f.get("vendor"), f.at("vendor")),
        device_id=pci_id(f.get("device"), f.at("device")),
        netdev=optional_netdev(f.get("netdev"), f.at("netdev")),
        where=f.where,
    )


def _port(value: object, where: str, base: PortSpec) -> PortSpec:
    f = Fields(value, where, _PORT_KEYS)
    return PortSpec(
        netdev=_netdev(f),
        state=port_state(f.get("state"), f.at("state")) if f.has("state") else base.state,
        rate=rate(f.get("rate"), f.at("rate")) if f.has("rate") else base.rate,
        link_layer=(
            link_layer(f.get("link_layer"), f.at("link_layer"))
            if f.has("link_layer")
            else base.link_layer
        ),
        operstate=(
            operstate(f.get("operstate"), f.at("operstate"))
            if f.has("operstate")
            else base.operstate
        ),
    )
