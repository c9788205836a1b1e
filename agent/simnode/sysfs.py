"""The sysfs subset of a simulated node, laid out and formatted as the kernel does.

`devices/pciDDDD:BB/<bdf>/.../<bdf>` nests every function under its bridges; `bus/pci`,
`class/infiniband`, `class/infiniband_verbs` and `class/net` hold relative links into it;
`devices/system` has the NUMA nodes and online CPUs. Verbs devices are numbered in PCI order,
as the kernel probes them, whatever the RDMA devices are named.
"""

from __future__ import annotations

from pathlib import PurePosixPath

from agent.simnode.files import Files, kernel_link
from agent.simnode.layout import VIRTIO_MODERN_BASE, Bridge, Layout, PlacedFunction
from agent.simnode.spec import NicSpec, NodeSpec
from gpulet.topology.cpulist import format_cpulist

DEVICES = PurePosixPath("devices")
PCI_DEVICES = PurePosixPath("bus/pci/devices")
CLASS_NET = PurePosixPath("class/net")
CLASS_INFINIBAND = PurePosixPath("class/infiniband")
CLASS_INFINIBAND_VERBS = PurePosixPath("class/infiniband_verbs")
#: The character-device major of `/dev/infiniband/uverbsN` and the minor of uverbs0.
UVERBS_MAJOR, UVERBS_BASE_MINOR = 231, 192
#: The kernel's IB_USER_VERBS_ABI_VERSION.
UVERBS_ABI = 6
NODES = PurePosixPath("devices/system/node")
VIRTUAL_NET = PurePosixPath("devices/virtual/net")

#: `ports/N/state` numbers (enum ib_port_state).
PORT_STATE_NUMBER = {"DOWN": 1, "INIT": 2, "ARMED": 3, "ACTIVE": 4}


def sysfs_files(layout: Layout) -> Files:
    """Every file and link under the simulated `/sys`."""
    spec = layout.spec
    files: Files = {}
    rdma = sorted(f.bdf for f in layout.functions if isinstance(f.payload, NicSpec))
    for function in layout.functions:
        _pci_function(files, function, _local_cpus(spec, function.numa))
        if isinstance(function.payload, NicSpec):
            _uverbs(files, function_dir(function), function.payload, rdma.index(function.bdf))
    if rdma:
        files[CLASS_INFINIBAND_VERBS / "abi_version"] = f"{UVERBS_ABI}\n"
    for name, state in (("lo", "unknown"), *spec.virtual_netdevs):
        _netdev(files, VIRTUAL_NET / name, state, device=None)
    _numa(files, spec)
    return files


def function_dir(function: PlacedFunction) -> PurePosixPath:
    """`devices/pci0000:15/0000:15:01.0/.../0000:1b:00.0`."""
    chain = [str(bdf) for bdf in (*function.parents, function.bdf)]
    return DEVICES.joinpath(function.host_bridge, *chain)


def _local_cpus(spec: NodeSpec, numa: int) -> str:
    """`local_cpulist`: the node's CPUs; every CPU when the node is unknown (-1)."""
    cpus = [cpu for node in spec.numa if numa in (-1, node.id) for cpu in node.cpus]
    return format_cpulist(cpus)


def _pci_function(files: Files, function: PlacedFunction, local_cpus: str) -> None:
    here = function_dir(function)
    files[here / "class"] = f"0x{function.class_code:06x}\n"
    files[here / "vendor"] = f"0x{function.vendor:04x}\n"
    files[here / "device"] = f"0x{function.device_id:04x}\n"
    files[here / "numa_node"] = f"{function.numa}\n"
    files[here / "local_cpulist"] = f"{local_cpus}\n"
    link = PCI_DEVICES / str(function.bdf)
    files[link] = kernel_link(link, here)
    payload = function.payload
    if isinstance(payload, Bridge):
        files[here / "secondary_bus_number"] = f"{payload.secondary}\n"
        files[here / "subordinate_bus_number"] = f"{payload.subordinate}\n"
    elif isinstance(payload, NicSpec):
        _rdma(files, here, payload, function.netdevs)
    else:
        parent = here
        if function.virtio is not None:
            parent = here / f"virtio{function.virtio}"
            files[parent / "vendor"] = f"0x{function.vendor:04x}\n"
            files[parent / "device"] = f"0x{function.device_id - VIRTIO_MODERN_BASE:04x}\n"
        for name in function.netdevs:
            if name:
                _netdev(files, parent / "net" / name, "up", device=parent)


def _rdma(files: Files, here: PurePosixPath, nic: NicSpec, netdevs: tuple[str | None, ...]) -> None:
    device = here / "infiniband" / nic.name
    for number, (port, netdev) in enumerate(zip(nic.ports, netdevs, strict=True), start=1):
        ports = device / "ports" / str(number)
        files[ports / "state"] = f"{PORT_STATE_NUMBER[port.state]}: {port.state}\n"
        # A port without a link keeps polling for a peer; any logical state above DOWN
        # means the physical link trained.
        files[ports / "phys_state"] = "2: Polling\n" if port.state == "DOWN" else "5: LinkUp\n"
        files[ports / "rate"] = f"{port.rate}\n"
        files[ports / "link_layer"] = f"{port.link_layer}\n"
        if netdev:
            state = port.operstate or ("up" if port.state == "ACTIVE" else "down")
            _netdev(files, here / "net" / netdev, state, device=here, dev_port=number - 1)
    files[device / "device"] = kernel_link(device / "device", here)
    link = CLASS_INFINIBAND / nic.name
    files[link] = kernel_link(link, device)


def _uverbs(files: Files, here: PurePosixPath, nic: NicSpec, number: int) -> None:
    device = here / "infiniband_verbs" / f"uverbs{number}"
    files[device / "ibdev"] = f"{nic.name}\n"
    files[device / "abi_version"] = f"{UVERBS_ABI}\n"
    files[device / "dev"] = f"{UVERBS_MAJOR}:{UVERBS_BASE_MINOR + number}\n"
    files[device / "device"] = kernel_link(device / "device", here)
    link = CLASS_INFINIBAND_VERBS / device.name
    files[link] = kernel_link(link, device)


def _netdev(
    files: Files,
    here: PurePosixPath,
    operstate: str,
    *,
    device: PurePosixPath | None,
    dev_port: int = 0,
) -> None:
    files[here / "operstate"] = f"{operstate}\n"
    files[here / "dev_port"] = f"{dev_port}\n"
    if device is not None:
        files[here / "device"] = kernel_link(here / "device", device)
    link = CLASS_NET / here.name
    files[link] = kernel_link(link, here)


def _numa(files: Files, spec: NodeSpec) -> None:
    for node in spec.numa:
        here = NODES / f"node{node.id}"
        files[here / "cpulist"] = f"{format_cpulist(node.cpus)}\n"
        files[here / "meminfo"] = (
            f"Node {node.id} MemTotal:       {node.memory_kib:8d} kB\n"
            f"Node {node.id} MemFree:        {node.memory_kib:8d} kB\n"
            f"Node {node.id} MemUsed:        {0:8d} kB\n"
        )
    files[NODES / "online"] = f"{format_cpulist([n.id for n in spec.numa])}\n"
    files[NODES / "possible"] = files[NODES / "online"]
    cpus = [cpu for node in spec.numa for cpu in node.cpus]
    files[PurePosixPath("devices/system/cpu/online")] = f"{format_cpulist(cpus)}\n"
    files[PurePosixPath("devices/system/cpu/possible")] = f"{format_cpulist(cpus)}\n"
