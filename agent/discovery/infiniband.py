"""RDMA ports from `class/infiniband`: state, rate, link layer, netdev and PCI function; and
each device's verbs node from `class/infiniband_verbs`."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import PurePosixPath

from agent.discovery.errors import DiscoveryError
from agent.discovery.pci import PciFunction, is_pci_path, read_pci_function
from agent.discovery.sysfs import SysfsTree

log = logging.getLogger(__name__)

INFINIBAND = PurePosixPath("class/infiniband")
#: `uverbs<N>/ibdev` names the RDMA device behind `/dev/infiniband/uverbs<N>`.
INFINIBAND_VERBS = PurePosixPath("class/infiniband_verbs")
_UVERBS = re.compile(r"uverbs(\d+)")

_STATE = re.compile(r"(?:\d+:\s*)?([A-Za-z_]+)")
_RATE = re.compile(r"(\d+(?:\.\d+)?)\s*Gb/sec\b.*")


@dataclass(frozen=True)
class RdmaPort:
    #: The RDMA device (`mlx5_0`).
    device: str
    port: int
    function: PciFunction
    #: `ACTIVE`, `DOWN`, `INIT`, `ARMED`, ...
    state: str
    rate_gbps: float
    #: `InfiniBand` or `Ethernet`.
    link_layer: str
    netdev: str | None
    #: The N of the device's `/dev/infiniband/uverbsN`; None: it has none.
    uverbs: int | None = None


def parse_port_state(text: str, source: str) -> str:
    """`4: ACTIVE` (the kernel's `ports/N/state`) to `ACTIVE`."""
    m = _STATE.fullmatch(text.strip())
    if not m:
        raise DiscoveryError(f"{source}: expected a port state like '4: ACTIVE', read {text!r}")
    return m[1].upper()


def parse_rate(text: str, source: str) -> float:
    """`400 Gb/sec (4X NDR)` (the kernel's `ports/N/rate`) to 400.0."""
    m = _RATE.fullmatch(text.strip())
    if not m:
        raise DiscoveryError(f"{source}: expected a rate like '400 Gb/sec (4X NDR)', read {text!r}")
    return float(m[1])


def read_rdma_ports(tree: SysfsTree) -> list[RdmaPort]:
    """Every port of every RDMA device backed by a PCI function; none without the class dir.

    Devices with no PCI function (soft RoCE, siw) cannot be placed on the PCIe tree and are
    left out.
    """
    ports: list[RdmaPort] = []
    verbs = read_uverbs(tree)
    for name in tree.listdir(INFINIBAND):
        base = INFINIBAND / name
        link = base / "device"
        if not tree.exists(link):
            log.debug("RDMA device %s has no device link; skipped", name)
            continue
        device_path = tree.resolve(link)
        if not is_pci_path(device_path):
            log.debug("RDMA device %s is not a PCI function (%s); skipped", name, device_path)
            continue
        function = read_pci_function(tree, device_path, tree.display(link))
        for port in _port_numbers(tree, base / "ports"):
            ports.append(_read_port(tree, name, port, base, function, uverbs=verbs.get(name)))
    return ports


def read_uverbs(tree: SysfsTree) -> dict[str, int]:
    """RDMA device name -> the N of its `/dev/infiniband/uverbsN` ({} without `ib_uverbs`).

    The kernel numbers verbs devices in the order it registers them, which need not be the
    order of the device names (udev renames them, probe order varies), so it is read, not
    guessed.
    """
    found: dict[str, int] = {}
    for entry in tree.listdir(INFINIBAND_VERBS):
        m = _UVERBS.fullmatch(entry)
        if not m:
            continue  # `abi_version`
        ibdev = INFINIBAND_VERBS / entry / "ibdev"
        name = tree.read_optional(ibdev, unreadable_as_missing=True)
        if not name:
            log.debug("%s has no ibdev; skipped", tree.display(ibdev))
            continue
        if name in found:
            raise DiscoveryError(
                f"{tree.display(INFINIBAND_VERBS)}: {name} has two verbs devices, "
                f"uverbs{found[name]} and {entry}"
            )
        found[name] = int(m[1])
    return found


def _port_numbers(tree: SysfsTree, ports_dir: PurePosixPath) -> list[int]:
    names = tree.listdir(ports_dir)
    bad = [n for n in names if not n.isdigit()]
    if bad:
        raise DiscoveryError(f"{tree.display(ports_dir)}: unexpected entry {bad[0]!r}")
    return sorted(int(n) for n in names)


def _read_port(
    tree: SysfsTree,
    device: str,
    port: int,
    base: PurePosixPath,
    function: PciFunction,
    *,
    uverbs: int | None,
) -> RdmaPort:
    where = base / "ports" / str(port)
    state_file, rate_file = where / "state", where / "rate"
    rate = tree.read_optional(rate_file, unreadable_as_missing=True)
    return RdmaPort(
        device=device,
        port=port,
        function=function,
        state=parse_port_state(tree.read(state_file), tree.display(state_file)),
        # Some drivers fail to read `rate` while the link is down: that is no rate, not an error.
        rate_gbps=parse_rate(rate, tree.display(rate_file)) if rate else 0.0,
        link_layer=tree.read(where / "link_layer"),
        netdev=_netdev(tree, port, where, function.path),
        uverbs=uverbs,
    )


def _netdev(
    tree: SysfsTree, port: int, port_dir: PurePosixPath, function_dir: PurePosixPath
) -> str | None:
    """The port's network interface.

    RoCE ports name it in `gid_attrs/ndevs/0` (the bond, under LAG); otherwise it is one of the
    PCI function's `net/` entries, the one whose `dev_port` is this port's (0-based) when there
    are several, and the shortest name among equals (`ib0` before its child `ib0.8001`).
    """
    ndev = tree.read_optional(port_dir / "gid_attrs/ndevs/0", unreadable_as_missing=True)
    if ndev:
        return ndev
    net = function_dir / "net"
    names = tree.listdir(net)
    if len(names) > 1:
        same_port = [
            n
            for n in names
            if tree.read_optional(net / n / "dev_port", unreadable_as_missing=True) == str(port - 1)
        ]
        names = same_port or names
    return min(names, key=lambda n: (len(n), n), default=None)
