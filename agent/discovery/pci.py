"""PCI functions in sysfs: addresses, their place in the PCIe tree, NUMA node and ids."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath

from agent.discovery.errors import DiscoveryError
from agent.discovery.sysfs import SysfsTree
from gpulet.topology.cpulist import parse_cpulist
from gpulet.topology.model import PcieLocation

#: A function address as sysfs spells it. Domains above ffff exist (Intel VMD: `10000:e1:00.0`).
_SYSFS_BDF = re.compile(r"[0-9a-f]{4,8}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]")
#: A host bridge (root complex) directory: `pci0000:00`.
_HOST_BRIDGE = re.compile(r"pci[0-9a-f]{4,8}:[0-9a-f]{2}")
#: Any spelling of a bus id: NVML's `00000000:07:00.0`, upper case, or no domain at all.
_ANY_BUS_ID = re.compile(
    r"(?:(?P<domain>[0-9a-fA-F]{1,8}):)?(?P<bus>[0-9a-fA-F]{1,2}):"
    r"(?P<dev>[0-9a-fA-F]{1,2})\.(?P<fn>[0-7])"
)

PCI_DEVICES = PurePosixPath("bus/pci/devices")


def normalize_bus_id(bus_id: str) -> str:
    """A PCI address in sysfs form, `0000:07:00.0`; raises ValueError when it is not one."""
    m = _ANY_BUS_ID.fullmatch(bus_id.strip())
    if not m:
        raise ValueError(f"not a PCI bus id: {bus_id!r}")
    domain = int(m["domain"] or "0", 16)
    return f"{domain:04x}:{int(m['bus'], 16):02x}:{int(m['dev'], 16):02x}.{m['fn']}"


def is_pci_path(path: PurePosixPath) -> bool:
    """Whether a resolved sysfs path lies below a PCI host bridge."""
    return any(_HOST_BRIDGE.fullmatch(part) for part in path.parts)


def location_from_path(path: PurePosixPath, source: str) -> PcieLocation:
    """The PCIe location of a function from its resolved path under `devices/`.

    The last `pciDDDD:BB` component is the host bridge (with VMD a second root complex sits
    below an endpoint of the first); every component after it must be a function address.
    `source` names what was resolved, for messages.
    """
    parts = path.parts
    starts = [i for i, part in enumerate(parts) if _HOST_BRIDGE.fullmatch(part)]
    if not starts:
        raise DiscoveryError(f"{source} resolves to {path}, which is not below a PCI host bridge")
    chain = parts[starts[-1] + 1 :]
    bad = [part for part in chain if not _SYSFS_BDF.fullmatch(part)]
    if not chain or bad:
        raise DiscoveryError(
            f"{source} resolves to {path}, which is not a chain of PCI functions"
            f" below {parts[starts[-1]]}"
        )
    return PcieLocation(pci=chain[-1], host_bridge=parts[starts[-1]], bridges=tuple(chain[:-1]))


@dataclass(frozen=True)
class PciFunction:
    #: The function's resolved directory, relative to the sysfs root.
    path: PurePosixPath
    location: PcieLocation
    #: The kernel's `numa_node`: -1 when firmware did not say.
    numa_node: int
    #: `local_cpulist`: the CPUs close to the device (empty when sysfs has none).
    local_cpus: tuple[int, ...]
    #: `class`, `vendor`, `device` as integers; None where sysfs lacks the file.
    pci_class: int | None
    vendor: int | None
    device: int | None

    @property
    def pci(self) -> str:
        return self.location.pci


def find_pci_function(tree: SysfsTree, bdf: str) -> PciFunction | None:
    """The function `bus/pci/devices/<bdf>` (sysfs form), or None when sysfs has none."""
    link = PCI_DEVICES / bdf
    if not tree.exists(link):
        return None
    path = tree.resolve(link)
    function = read_pci_function(tree, path, tree.display(link))
    if function.pci != bdf:
        raise DiscoveryError(f"{tree.display(link)} resolves to {path}, another function")
    return function


def read_pci_function(tree: SysfsTree, path: PurePosixPath, source: str) -> PciFunction:
    """The function whose resolved directory is `path` (`source` names it in messages)."""
    return PciFunction(
        path=path,
        location=location_from_path(path, source),
        numa_node=_read_numa_node(tree, path / "numa_node"),
        local_cpus=_read_cpulist(tree, path / "local_cpulist"),
        pci_class=_read_hex_optional(tree, path / "class"),
        vendor=_read_hex_optional(tree, path / "vendor"),
        device=_read_hex_optional(tree, path / "device"),
    )


def _read_numa_node(tree: SysfsTree, rel: PurePosixPath) -> int:
    text = tree.read_optional(rel)
    if text is None:
        return -1
    try:
        node = int(text)
    except ValueError:
        node = -2
    if node < -1:
        raise DiscoveryError(f"{tree.display(rel)}: expected a NUMA node or -1, read {text!r}")
    return node


def _read_hex_optional(tree: SysfsTree, rel: PurePosixPath) -> int | None:
    text = tree.read_optional(rel)
    if text is None:
        return None
    try:
        return int(text, 16)
    except ValueError:
        raise DiscoveryError(f"{tree.display(rel)}: expected a hex number, read {text!r}") from None


def _read_cpulist(tree: SysfsTree, rel: PurePosixPath) -> tuple[int, ...]:
    text = tree.read_optional(rel)
    if text is None:
        return ()
    try:
        return parse_cpulist(text)
    except ValueError as err:
        raise DiscoveryError(f"{tree.display(rel)}: {err}") from None
