"""Placing a spec at PCI addresses: bus numbers assigned depth-first, as firmware does.

A port's secondary bus is the next free bus in its domain, unless the device below it gives
its own address: numbering then jumps to that bus (it never goes back). A switch's upstream
port takes one bus for its internal link; its downstream ports are devices 00, 01, ... on
it. Devices on a root bus without an address take device numbers from 01 up. Pure: the
result is a list of placed functions; `render.py` turns it into files.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from itertools import count

from agent.simnode.bdf import MAX_BUS, MAX_DEVICE, Bdf
from agent.simnode.errors import SimulationError
from agent.simnode.spec import (
    Auto,
    DeviceSpec,
    FunctionSpec,
    GpuSpec,
    HostBridgeSpec,
    NicSpec,
    NodeSpec,
    NvSwitchSpec,
    PciSpec,
    RootPortSpec,
    SwitchSpec,
)
from agent.simnode.values import IFNAMSIZ

NVIDIA = 0x10DE
MELLANOX = 0x15B3
VIRTIO = 0x1AF4
#: Modern virtio-pci device ids are 0x1040 + the virtio device type.
VIRTIO_MODERN_BASE = 0x1040
CLASS_3D_CONTROLLER = 0x030200
CLASS_PCI_BRIDGE = 0x060400
CLASS_OTHER_BRIDGE = 0x068000


@dataclass(frozen=True)
class Bridge:
    """A bridge function: a root port or a switch's upstream or downstream port."""

    role: str
    secondary: int
    subordinate: int


@dataclass(frozen=True)
class PlacedFunction:
    bdf: Bdf
    #: Bridge functions above this one, root port first (empty on a root bus).
    parents: tuple[Bdf, ...]
    #: `pci0000:15`.
    host_bridge: str
    #: The kernel's `numa_node` (-1: unknown).
    numa: int
    class_code: int
    vendor: int
    device_id: int
    payload: FunctionSpec | Bridge
    #: One netdev per NIC port (None: that port has none), or a PCI function's netdev.
    netdevs: tuple[str | None, ...] = ()
    #: N of the `virtioN` child device of a virtio function.
    virtio: int | None = None


@dataclass(frozen=True)
class Layout:
    spec: NodeSpec
    #: Every function, depth-first in the order the spec lists them.
    functions: tuple[PlacedFunction, ...]

    def gpus(self) -> list[tuple[PlacedFunction, GpuSpec]]:
        """GPUs by index."""
        found = [(f, f.payload) for f in self.functions if isinstance(f.payload, GpuSpec)]
        return sorted(found, key=lambda pair: pair[1].index)

    def nvswitches(self) -> list[tuple[PlacedFunction, NvSwitchSpec]]:
        """NVSwitches by index."""
        found = [(f, f.payload) for f in self.functions if isinstance(f.payload, NvSwitchSpec)]
        return sorted(found, key=lambda pair: pair[1].index)


def lay_out(spec: NodeSpec) -> Layout:
    """Give every function its address; SimulationError when addresses collide."""
    placer = _Placer()
    try:
        for bridge in spec.host_bridges:
            placer.host_bridge(bridge)
        functions = _number_virtio(placer.placed())
        _check_netdevs(spec, functions)
    except SimulationError as err:
        if spec.source is None:
            raise
        raise SimulationError(f"{spec.source}: {err}") from None
    return Layout(spec, functions)


@dataclass(frozen=True)
class _Context:
    domain: int
    host_bridge: str
    numa: int


class _Placer:
    """Walks the spec depth-first, handing out bus and device numbers."""

    def __init__(self) -> None:
        self.next_bus: dict[int, int] = {}
        self.owners: dict[Bdf, str] = {}
        self.slots: list[PlacedFunction | None] = []

    def placed(self) -> tuple[PlacedFunction, ...]:
        return tuple(f for f in self.slots if f is not None)

    def host_bridge(self, hb: HostBridgeSpec) -> None:
        first_free = self.next_bus.get(hb.domain, 0)
        if hb.bus < first_free:
            raise SimulationError(
                f"{hb.where}: host bridge {hb.name} overlaps buses already numbered (up to "
                f"{first_free - 1:02x}); list host bridges in bus order"
            )
        self.next_bus[hb.domain] = hb.bus + 1
        ctx = _Context(hb.domain, hb.name, hb.numa)
        taken = {c.bdf.device for c in hb.children if c.bdf}
        free = (d for d in count(1) if d not in taken)
        for child in hb.children:
            if child.bdf:
                if (child.bdf.domain, child.bdf.bus) != (hb.domain, hb.bus):
                    raise SimulationError(
                        f"{child.where}.bdf: {child.bdf} is not on the root bus of {hb.name}"
                    )
                bdf = child.bdf
            else:
                device = next(free)
                if device > MAX_DEVICE:
                    raise SimulationError(f"{child.where}: no device number left on {hb.name}")
                bdf = Bdf(hb.domain, hb.bus, device, 0)
            if isinstance(child, RootPortSpec):
                self.port(bdf, child, child.child, (), ctx)
            else:
                self.device(child, bdf, (), ctx)

    def port(
        self,
        bdf: Bdf,
        bridge: RootPortSpec | SwitchSpec,
        child: SwitchSpec | DeviceSpec | None,
        parents: tuple[Bdf, ...],
        ctx: _Context,
    ) -> None:
        """A root port, or a downstream port of the switch `bridge`, and what hangs below."""
        slot = self.reserve(bdf, bridge.where)
        if child is None:
            secondary = self.take_bus(ctx, None, bridge.where)
        else:
            secondary = self.take_bus(ctx, child.bdf, child.where)
            if child.bdf and child.bdf.device != 0:
                raise SimulationError(
                    f"{child.where}.bdf: {child.bdf} sits below a port, so it must be "
                    f"device 00 on its bus ({Bdf(ctx.domain, secondary, 0, 0)})"
                )
            address = child.bdf or Bdf(ctx.domain, secondary, 0, 0)
            if isinstance(child, SwitchSpec):
                self.switch(child, address, (*parents, bdf), ctx)
            else:
                self.device(child, address, (*parents, bdf), ctx)
        role = "root port" if isinstance(bridge, RootPortSpec) else "downstream port"
        info = Bridge(role, secondary, self.next_bus[ctx.domain] - 1)
        ids = (CLASS_PCI_BRIDGE, bridge.vendor, bridge.device_id)
        self.fill(slot, bdf, parents, ctx, ids=ids, payload=info)

    def switch(self, switch: SwitchSpec, bdf: Bdf, parents: tuple[Bdf, ...], ctx: _Context) -> None:
        if bdf.function != 0:
            raise SimulationError(f"{switch.where}.bdf: {bdf} must name function 0")
        if len(switch.children) > MAX_DEVICE + 1:
            raise SimulationError(
                f"{switch.where}: a switch has at most {MAX_DEVICE + 1} downstream ports"
            )
        slot = self.reserve(bdf, switch.where)
        internal = self.take_bus(ctx, None, switch.where)
        for i, child in enumerate(switch.children):
            downstream = Bdf(ctx.domain, internal, i, 0)
            self.port(downstream, switch, child, (*parents, bdf), ctx)
        bridge = Bridge("upstream port", internal, self.next_bus[ctx.domain] - 1)
        ids = (CLASS_PCI_BRIDGE, switch.vendor, switch.device_id)
        self.fill(slot, bdf, parents, ctx, ids=ids, payload=bridge)

    def device(self, device: DeviceSpec, bdf: Bdf, parents: tuple[Bdf, ...], ctx: _Context) -> None:
        if bdf.function != 0:
            raise SimulationError(
                f"{device.where}.bdf: {bdf} must name function 0 (list more functions in a card)"
            )
        multifunction = len(device.functions) > 1
        for number, function in enumerate(device.functions):
            address = bdf._replace(function=number)
            slot = self.reserve(address, device.where)
            netdevs = _netdevs(function, address, multifunction)
            self.fill(
                slot, address, parents, ctx, ids=_ids(function), payload=function, netdevs=netdevs
            )

    def reserve(self, bdf: Bdf, where: str) -> int:
        """Claim an address and a place in depth-first order."""
        if bdf in self.owners:
            raise SimulationError(f"{where}: address {bdf} is already taken by {self.owners[bdf]}")
        self.owners[bdf] = where
        self.slots.append(None)
        return len(self.slots) - 1

    def fill(
        self,
        slot: int,
        bdf: Bdf,
        parents: tuple[Bdf, ...],
        ctx: _Context,
        *,
        ids: tuple[int, int, int],
        payload: FunctionSpec | Bridge,
        netdevs: tuple[str | None, ...] = (),
    ) -> None:
        """Put a function in its reserved place; `ids` are class code, vendor, device id."""
        class_code, vendor, device_id = ids
        self.slots[slot] = PlacedFunction(
            bdf,
            parents,
            ctx.host_bridge,
            ctx.numa,
            class_code,
            vendor,
            device_id,
            payload,
            netdevs,
        )

    def take_bus(self, ctx: _Context, explicit: Bdf | None, where: str) -> int:
        first_free = self.next_bus[ctx.domain]
        bus = first_free
        if explicit is not None:
            if explicit.domain != ctx.domain:
                raise SimulationError(f"{where}.bdf: {explicit} is not in domain {ctx.domain:04x}")
            if explicit.bus < first_free:
                raise SimulationError(
                    f"{where}.bdf: bus {explicit.bus:02x} is already numbered; the next free bus "
                    f"here is {first_free:02x} (buses rise depth-first in the order written)"
                )
            bus = explicit.bus
        if bus > MAX_BUS:
            raise SimulationError(f"{where}: no bus number left in domain {ctx.domain:04x}")
        self.next_bus[ctx.domain] = bus + 1
        return bus


def _ids(function: FunctionSpec) -> tuple[int, int, int]:
    """Class code, vendor and device id of a function."""
    if isinstance(function, GpuSpec):
        return CLASS_3D_CONTROLLER, NVIDIA, function.device_id
    if isinstance(function, NicSpec):
        return function.class_code, MELLANOX, function.device_id
    if isinstance(function, NvSwitchSpec):
        return CLASS_OTHER_BRIDGE, NVIDIA, function.device_id
    return function.class_code, function.vendor, function.device_id


def _netdevs(function: FunctionSpec, bdf: Bdf, multifunction: bool) -> tuple[str | None, ...]:
    if isinstance(function, PciSpec):
        return (function.netdev,) if function.netdev else ()
    if not isinstance(function, NicSpec):
        return ()
    names: list[str | None] = []
    for number, port in enumerate(function.ports, start=1):
        if port.netdev is Auto.AUTO:
            name = derived_netdev(bdf, multifunction, port.link_layer, number)
            if len(name) >= IFNAMSIZ:
                raise SimulationError(
                    f"{function.where}: the derived netdev name {name!r} is too long; "
                    "give netdev explicitly"
                )
            names.append(name)
        else:
            names.append(port.netdev)
    return tuple(names)


def derived_netdev(bdf: Bdf, multifunction: bool, link_layer: str, port: int) -> str:
    """The name systemd gives an mlx5 netdev by its PCI path: `ibp24s0`, `enp41s0f1np1`.

    IPoIB: `ib` + location; Ethernet: `en` + location + `np<physical port>` (mlx5 names
    its uplink port after the PCI function); a second IB port of one function adds `d1`.
    """
    domain = f"P{bdf.domain}" if bdf.domain else ""
    function = f"f{bdf.function}" if multifunction else ""
    location = f"{domain}p{bdf.bus}s{bdf.device}{function}"
    if link_layer == "Ethernet":
        return f"en{location}np{bdf.function}" + (f"d{port - 1}" if port > 1 else "")
    return f"ib{location}" + (f"d{port - 1}" if port > 1 else "")


def _number_virtio(functions: tuple[PlacedFunction, ...]) -> tuple[PlacedFunction, ...]:
    """Virtio functions get `virtio0`, `virtio1`, ... in address order, as the kernel probes."""
    virtio = sorted(
        f.bdf for f in functions if f.vendor == VIRTIO and f.device_id >= VIRTIO_MODERN_BASE
    )
    number = {bdf: n for n, bdf in enumerate(virtio)}
    return tuple(replace(f, virtio=number[f.bdf]) if f.bdf in number else f for f in functions)


def _check_netdevs(spec: NodeSpec, functions: tuple[PlacedFunction, ...]) -> None:
    owners: dict[str, str] = {}
    named = [(name, "virtual_netdevs") for name, _ in spec.virtual_netdevs]
    if "lo" not in dict(spec.virtual_netdevs):
        named.insert(0, ("lo", "the loopback device every node has"))
    for function in functions:
        if not isinstance(function.payload, Bridge):
            named += [(name, function.payload.where) for name in function.netdevs if name]
    for name, where in named:
        if name in owners:
            raise SimulationError(f"{where}: netdev {name!r} is already used by {owners[name]}")
        owners[name] = where
