"""The locality levels the objective is built on, from a device's place in the PCIe tree.

machine > NUMA node > host bridge > group > PIX cluster > device, where a *group* is what
hangs below one root port (its top PCIe switch, or a card straight on the port) and a *PIX
cluster* is the set of devices right below one switch (at most one switch between them).
"""

from __future__ import annotations

from gpulet.topology import PcieLocation


def _slot(loc: PcieLocation) -> str:
    # Functions of one device on the root bus share bus:device, differ in function.
    return f"{loc.host_bridge}/{loc.pci.rsplit('.', 1)[0]}"


def group_of(loc: PcieLocation) -> str:
    """The top switch, else the root port, else the slot on the root bus."""
    if loc.bridges:
        return loc.switch or loc.bridges[0]
    return _slot(loc)


def pix_of(loc: PcieLocation) -> str:
    """The lowest switch right above the device (its upstream port), else the group."""
    n = len(loc.bridges)
    if n >= 2:
        # bridges alternate root port, upstream, downstream, ...: the device's parent is the
        # last bridge; if that is a downstream port its switch is the bridge before it.
        return loc.bridges[-2] if (n - 1) % 2 == 0 else loc.bridges[-1]
    return group_of(loc)
