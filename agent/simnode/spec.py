"""A validated simulated-node spec: what `parse.py` builds and `layout.py` places.

Every value here is already checked and has its defaults applied; `where` fields name
the place in the spec file (`pcie[0].devices[1].root_port`) for errors found later.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from agent.simnode.bdf import Bdf, host_bridge_name

DEFAULT_DRIVER_VERSION = "580.159.04"
DEFAULT_CUDA_DRIVER_VERSION = 13000


class Auto(enum.Enum):
    """A value the layout derives (a netdev name from the function's address)."""

    AUTO = "auto"


@dataclass(frozen=True)
class NumaSpec:
    id: int
    cpus: tuple[int, ...]
    memory_kib: int


@dataclass(frozen=True)
class GpuSpec:
    index: int
    model: str
    memory_bytes: int
    device_id: int
    #: `GPU-...`; None derives one from the node name and index.
    uuid: str | None
    #: The `/dev/nvidiaN` number; None means the index.
    minor: int | None
    mig: bool
    #: NVLinks into the NVSwitch fabric: one count per NVSwitch (in NVSwitch index
    #: order), or a total spread evenly over all NVSwitches.
    nvswitch_links: tuple[int, ...] | int
    #: What NVML says about NVLink support; None: supported when the GPU has links.
    nvlink_supported: bool | None
    where: str


@dataclass(frozen=True)
class PortSpec:
    """One RDMA port (`infiniband/<dev>/ports/<n>`) and its netdev."""

    netdev: str | Auto | None
    #: Logical port state as the kernel names it: DOWN, INIT, ARMED, ACTIVE.
    state: str
    #: The kernel's `rate` text: `400 Gb/sec (4X NDR)`.
    rate: str
    #: `InfiniBand` or `Ethernet`.
    link_layer: str
    #: Netdev `operstate` (`up`, `down`, `unknown`); None follows the port state.
    operstate: str | None


@dataclass(frozen=True)
class NicSpec:
    name: str
    device_id: int
    ports: tuple[PortSpec, ...]
    where: str

    @property
    def class_code(self) -> int:
        """Infiniband controller or Ethernet controller, after the first port's link layer."""
        return 0x020700 if self.ports[0].link_layer == "InfiniBand" else 0x020000


@dataclass(frozen=True)
class NvSwitchSpec:
    index: int
    device_id: int
    where: str


@dataclass(frozen=True)
class PciSpec:
    """Any other PCI function (host bridge function, virtio device, NVMe drive, ...)."""

    label: str
    class_code: int
    vendor: int
    device_id: int
    netdev: str | None
    where: str


FunctionSpec = GpuSpec | NicSpec | NvSwitchSpec | PciSpec


@dataclass(frozen=True)
class DeviceSpec:
    """A PCI device: one or more functions (`.0`, `.1`, ...) at one address."""

    functions: tuple[FunctionSpec, ...]
    #: Address of function 0; None lets the layout number it.
    bdf: Bdf | None
    where: str


@dataclass(frozen=True)
class SwitchSpec:
    """A PCIe switch: an upstream port and one downstream port per child."""

    vendor: int
    device_id: int
    children: tuple[SwitchSpec | DeviceSpec, ...]
    #: Address of the upstream port; None lets the layout number it.
    bdf: Bdf | None
    where: str


@dataclass(frozen=True)
class RootPortSpec:
    vendor: int
    device_id: int
    #: What the port links to; None for an empty slot.
    child: SwitchSpec | DeviceSpec | None
    bdf: Bdf | None
    where: str


@dataclass(frozen=True)
class HostBridgeSpec:
    """A PCI root complex (`pci0000:15`) and what sits on its root bus."""

    domain: int
    bus: int
    #: The kernel's `numa_node` for everything below; -1 when firmware does not say.
    numa: int
    children: tuple[RootPortSpec | DeviceSpec, ...]
    where: str

    @property
    def name(self) -> str:
        return host_bridge_name(self.domain, self.bus)


@dataclass(frozen=True)
class NvlinkPairSpec:
    """Direct NVLinks (a bridge) between two GPUs."""

    gpus: tuple[int, int]
    links: int
    active: bool
    where: str


@dataclass(frozen=True)
class NodeSpec:
    name: str
    driver_version: str
    cuda_driver_version: int
    numa: tuple[NumaSpec, ...]
    host_bridges: tuple[HostBridgeSpec, ...]
    nvlink_pairs: tuple[NvlinkPairSpec, ...]
    #: Netdevs with no device (`devices/virtual/net`), name -> operstate; `lo` is implied.
    virtual_netdevs: tuple[tuple[str, str], ...]
    #: The spec's file, prefixed to errors found when laying it out; None when unknown.
    source: str | None = None
