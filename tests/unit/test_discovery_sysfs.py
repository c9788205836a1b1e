"""The sysfs readers: safe resolution, PCI functions, NUMA nodes, RDMA ports."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pytest

from agent.discovery.errors import DiscoveryError
from agent.discovery.infiniband import parse_port_state, parse_rate, read_rdma_ports
from agent.discovery.numa import device_numa, read_numa_nodes
from agent.discovery.pci import (
    find_pci_function,
    location_from_path,
    normalize_bus_id,
)
from agent.discovery.sysfs import SysfsTree
from gpulet.topology.model import NumaNode, PcieLocation
from tests.fixtures.discovery.sysfs_tree import Port, SysfsTreeBuilder

SWITCHED = "pci0000:00/0000:00:01.1/0000:01:00.0/0000:02:00.0/0000:07:00.0"


@pytest.fixture
def tree(tmp_path: Path) -> SysfsTreeBuilder:
    return SysfsTreeBuilder(tmp_path / "sys")


# --- safe resolution -------------------------------------------------------------------


def test_resolve_follows_relative_links_inside_the_root(tree: SysfsTreeBuilder) -> None:
    tree.function(SWITCHED)
    got = SysfsTree(tree.root).resolve("bus/pci/devices/0000:07:00.0")
    assert got == PurePosixPath("devices", *SWITCHED.split("/"))


def test_resolve_refuses_a_link_out_of_the_root(tree: SysfsTreeBuilder, tmp_path: Path) -> None:
    (tmp_path / "outside").mkdir()
    link = tree.root / "bus/pci/devices/0000:07:00.0"
    link.parent.mkdir(parents=True)
    link.symlink_to("../../../../outside")
    with pytest.raises(DiscoveryError, match="leads out of the sysfs root"):
        SysfsTree(tree.root).resolve("bus/pci/devices/0000:07:00.0/numa_node")


def test_resolve_refuses_an_absolute_link(tree: SysfsTreeBuilder) -> None:
    link = tree.root / "bus/pci/devices/0000:07:00.0"
    link.parent.mkdir(parents=True)
    link.symlink_to("/sys/devices/pci0000:00/0000:07:00.0")
    with pytest.raises(DiscoveryError, match="absolute symlink"):
        SysfsTree(tree.root).read("bus/pci/devices/0000:07:00.0/numa_node")


def test_resolve_refuses_a_loop(tree: SysfsTreeBuilder) -> None:
    tree.root.mkdir()
    (tree.root / "a").symlink_to("b")
    (tree.root / "b").symlink_to("a")
    with pytest.raises(DiscoveryError, match="too many levels of symlinks"):
        SysfsTree(tree.root).resolve("a/x")


def test_resolve_refuses_dotdot_above_the_root(tree: SysfsTreeBuilder) -> None:
    tree.root.mkdir()
    with pytest.raises(DiscoveryError, match="out of the sysfs root"):
        SysfsTree(tree.root).resolve("../etc/passwd")


def test_read_names_a_missing_file(tree: SysfsTreeBuilder) -> None:
    tree.root.mkdir()
    with pytest.raises(DiscoveryError, match=r"sys/class/x/state: missing"):
        SysfsTree(tree.root).read("class/x/state")
    assert SysfsTree(tree.root).read_optional("class/x/state") is None
    assert SysfsTree(tree.root).listdir("class/x") == []


def test_only_the_host_root_is_the_host_sysfs(tree: SysfsTreeBuilder) -> None:
    assert SysfsTree(Path("/sys")).is_host_sysfs()
    assert not SysfsTree(tree.root).is_host_sysfs()


# --- PCI ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "want"),
    [
        ("00000000:07:00.0", "0000:07:00.0"),
        ("00000000:C7:00.0", "0000:c7:00.0"),
        ("0000:c7:00.1", "0000:c7:00.1"),
        ("07:00.0", "0000:07:00.0"),
        ("00010000:E1:00.0", "10000:e1:00.0"),
    ],
)
def test_normalize_bus_id(given: str, want: str) -> None:
    assert normalize_bus_id(given) == want


@pytest.mark.parametrize("bad", ["", "0000:07:00", "0000:07:00.8", "gpu0", "0000:07:00.0x"])
def test_normalize_bus_id_refuses_junk(bad: str) -> None:
    with pytest.raises(ValueError, match="not a PCI bus id"):
        normalize_bus_id(bad)


@pytest.mark.parametrize(
    ("path", "want"),
    [
        (
            "devices/pci0000:00/0000:00:06.0",
            PcieLocation("0000:00:06.0", "pci0000:00"),
        ),
        (
            "devices/" + SWITCHED,
            PcieLocation(
                "0000:07:00.0",
                "pci0000:00",
                ("0000:00:01.1", "0000:01:00.0", "0000:02:00.0"),
            ),
        ),
        (
            # Intel VMD: a second root complex below an endpoint of the first.
            "devices/pci0000:00/0000:00:0e.0/pci10000:e0/10000:e0:06.0/10000:e1:00.0",
            PcieLocation("10000:e1:00.0", "pci10000:e0", ("10000:e0:06.0",)),
        ),
        (
            # Hyper-V: the host bridge hangs off the VMBus, not off devices/.
            "devices/LNXSYSTM:00/LNXSYBUS:00/ACPI0004:00/VMBUS:00/47505500-0001/pci0001:00/0001:00:00.0",
            PcieLocation("0001:00:00.0", "pci0001:00"),
        ),
    ],
)
def test_location_from_path(path: str, want: PcieLocation) -> None:
    assert location_from_path(PurePosixPath(path), "x") == want


@pytest.mark.parametrize(
    ("path", "error"),
    [
        ("devices/virtual/net/lo", "not below a PCI host bridge"),
        ("devices/pci0000:00/0000:00:01.0/usb1", "not a chain of PCI functions"),
        ("devices/pci0000:00", "not a chain of PCI functions"),
    ],
)
def test_location_from_path_refuses(path: str, error: str) -> None:
    with pytest.raises(DiscoveryError, match=error):
        location_from_path(PurePosixPath(path), "bus/pci/devices/x")


def test_pci_function_attributes(tree: SysfsTreeBuilder) -> None:
    tree.function(SWITCHED, numa=1, local_cpus="8-15,24-31")
    fn = find_pci_function(SysfsTree(tree.root), "0000:07:00.0")
    assert fn is not None
    assert fn.location.bridges == ("0000:00:01.1", "0000:01:00.0", "0000:02:00.0")
    assert fn.location.switch == "0000:01:00.0"
    assert fn.numa_node == 1
    assert fn.local_cpus == (*range(8, 16), *range(24, 32))
    assert (fn.pci_class, fn.vendor, fn.device) == (0x030200, 0x10DE, 0x2330)


def test_pci_function_missing(tree: SysfsTreeBuilder) -> None:
    tree.function(SWITCHED)
    assert find_pci_function(SysfsTree(tree.root), "0000:08:00.0") is None


def test_pci_function_without_numa_node_file_is_unknown(tree: SysfsTreeBuilder) -> None:
    tree.function(SWITCHED, numa=None)
    fn = find_pci_function(SysfsTree(tree.root), "0000:07:00.0")
    assert fn is not None
    assert fn.numa_node == -1
    assert fn.local_cpus == ()


@pytest.mark.parametrize(
    ("name", "content", "error"),
    [
        ("numa_node", "zero", r"0000:07:00.0/numa_node: expected a NUMA node or -1"),
        ("numa_node", "-7", r"0000:07:00.0/numa_node: expected a NUMA node or -1"),
        ("local_cpulist", "0-3,x", r"0000:07:00.0/local_cpulist: bad cpulist part"),
        ("class", "display", r"0000:07:00.0/class: expected a hex number"),
    ],
)
def test_pci_function_malformed_attribute(
    tree: SysfsTreeBuilder, name: str, content: str, error: str
) -> None:
    path = tree.function(SWITCHED)
    tree.write(f"{path}/{name}", content)
    with pytest.raises(DiscoveryError, match=error):
        find_pci_function(SysfsTree(tree.root), "0000:07:00.0")


def test_pci_devices_entry_pointing_at_another_function(tree: SysfsTreeBuilder) -> None:
    tree.function(SWITCHED)
    tree.link("bus/pci/devices/0000:08:00.0", "devices/" + SWITCHED)
    with pytest.raises(DiscoveryError, match="another function"):
        find_pci_function(SysfsTree(tree.root), "0000:08:00.0")


# --- NUMA -----------------------------------------------------------------------------


def test_numa_nodes(tree: SysfsTreeBuilder) -> None:
    tree.numa_node(1, "56-111,168-223", mem_kb=1056690176)
    tree.numa_node(0, "0-55,112-167", mem_kb=1056690176)
    nodes = read_numa_nodes(SysfsTree(tree.root))
    assert [n.id for n in nodes] == [0, 1]
    assert nodes[1].cpus == (*range(56, 112), *range(168, 224))
    assert nodes[0].memory_mib == 1056690176 // 1024


def test_numa_without_node_dir_uses_online_cpus(tree: SysfsTreeBuilder) -> None:
    tree.write("devices/system/cpu/online", "0-15")
    assert read_numa_nodes(SysfsTree(tree.root)) == (NumaNode(0, tuple(range(16)), 0),)


def test_numa_without_node_or_cpu_dir(tree: SysfsTreeBuilder) -> None:
    tree.root.mkdir()
    assert read_numa_nodes(SysfsTree(tree.root)) == (NumaNode(0, (), 0),)


def test_numa_without_node_dir_on_the_host_asks_psutil(
    tree: SysfsTreeBuilder, monkeypatch: pytest.MonkeyPatch
) -> None:
    tree.root.mkdir()
    monkeypatch.setattr(SysfsTree, "is_host_sysfs", lambda self: True)
    (node,) = read_numa_nodes(SysfsTree(tree.root))
    assert node.id == 0
    assert len(node.cpus) >= 1
    assert node.memory_mib > 0


@pytest.mark.parametrize(
    ("name", "content", "error"),
    [
        ("cpulist", "0-3-5", r"node0/cpulist: bad cpulist part"),
        ("cpulist", "7-2", r"node0/cpulist: bad cpulist range"),
        ("meminfo", "Node 0 MemFree: 5 kB", r"node0/meminfo: no 'Node 0 MemTotal"),
    ],
)
def test_numa_malformed(tree: SysfsTreeBuilder, name: str, content: str, error: str) -> None:
    tree.numa_node(0, "0-3")
    tree.write(f"devices/system/node/node0/{name}", content)
    with pytest.raises(DiscoveryError, match=error):
        read_numa_nodes(SysfsTree(tree.root))


def test_numa_missing_meminfo(tree: SysfsTreeBuilder) -> None:
    tree.numa_node(0, "0-3")
    (tree.root / "devices/system/node/node0/meminfo").unlink()
    with pytest.raises(DiscoveryError, match=r"node0/meminfo: missing"):
        read_numa_nodes(SysfsTree(tree.root))


ONE = (NumaNode(0, (0, 1, 2, 3), 1024),)
TWO = (NumaNode(0, (0, 1), 1024), NumaNode(1, (2, 3), 1024))


@pytest.mark.parametrize(
    ("kernel", "local", "nodes", "want"),
    [
        (-1, (0, 1, 2, 3), ONE, 0),  # one node: -1 is that node
        (-1, (), ONE, 0),
        (-1, (2, 3), TWO, 1),  # several: the node holding local_cpulist
        (-1, (3,), TWO, 1),
        (-1, (0, 1, 2, 3), TWO, 0),  # spans nodes: the lowest
        (-1, (), TWO, 0),
        (1, (0, 1), TWO, 1),  # the kernel's word wins
    ],
)
def test_device_numa(
    kernel: int, local: tuple[int, ...], nodes: tuple[NumaNode, ...], want: int
) -> None:
    assert device_numa(kernel, local, nodes, "x") == want


def test_device_numa_refuses_an_unknown_node() -> None:
    with pytest.raises(DiscoveryError, match=r"dev/numa_node: NUMA node 3 is not among"):
        device_numa(3, (), TWO, "dev/numa_node")


# --- RDMA -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("4: ACTIVE", "ACTIVE"),
        ("1: DOWN", "DOWN"),
        ("2: INIT", "INIT"),
        ("3: ARMED", "ARMED"),
        ("5: ACTIVE_DEFER", "ACTIVE_DEFER"),
        ("ACTIVE", "ACTIVE"),
    ],
)
def test_parse_port_state(text: str, want: str) -> None:
    assert parse_port_state(text, "x") == want


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("400 Gb/sec (4X NDR)", 400.0),
        ("200 Gb/sec (4X HDR)", 200.0),
        ("100 Gb/sec (2X HDR)", 100.0),
        ("56 Gb/sec (4X FDR)", 56.0),
        ("2.5 Gb/sec (1X SDR)", 2.5),
        ("10 Gb/sec (4X)", 10.0),
    ],
)
def test_parse_rate(text: str, want: float) -> None:
    assert parse_rate(text, "x") == want


def test_parse_errors_name_the_file() -> None:
    with pytest.raises(DiscoveryError, match="ports/1/state: expected a port state"):
        parse_port_state("4: ", "mlx5_0/ports/1/state")
    with pytest.raises(DiscoveryError, match="ports/1/rate: expected a rate"):
        parse_rate("fast", "mlx5_0/ports/1/rate")


def test_no_infiniband_dir_means_no_ports(tree: SysfsTreeBuilder) -> None:
    tree.function(SWITCHED)
    assert read_rdma_ports(SysfsTree(tree.root)) == []


def test_rdma_port(tree: SysfsTreeBuilder) -> None:
    tree.hca(
        "mlx5_0", "pci0000:00/0000:00:01.1/0000:01:00.0/0000:02:01.0/0000:0c:00.0", netdev="ibp12s0"
    )
    (port,) = read_rdma_ports(SysfsTree(tree.root))
    assert (port.device, port.port, port.state, port.rate_gbps, port.link_layer) == (
        "mlx5_0",
        1,
        "ACTIVE",
        400.0,
        "InfiniBand",
    )
    assert port.netdev == "ibp12s0"
    assert port.function.location == PcieLocation(
        "0000:0c:00.0", "pci0000:00", ("0000:00:01.1", "0000:01:00.0", "0000:02:01.0")
    )


def test_rdma_port_without_netdev_or_rate(tree: SysfsTreeBuilder) -> None:
    tree.hca("mlx5_0", "pci0000:00/0000:00:02.0", ports={1: Port(state="1: DOWN", rate=None)})
    (port,) = read_rdma_ports(SysfsTree(tree.root))
    assert (port.state, port.rate_gbps, port.netdev) == ("DOWN", 0.0, None)


def test_two_port_device_netdevs(tree: SysfsTreeBuilder) -> None:
    """Two ports of one function: `dev_port` picks each port's netdev."""
    ports = {1: Port(link_layer="Ethernet"), 2: Port(link_layer="Ethernet", state="1: DOWN")}
    fn = tree.hca("mlx4_0", "pci0000:00/0000:00:02.0", ports=ports)
    tree.netdev(fn, "ens2", dev_port=1)
    tree.netdev(fn, "ens1", dev_port=0)
    got = {(p.port, p.state, p.netdev) for p in read_rdma_ports(SysfsTree(tree.root))}
    assert got == {(1, "ACTIVE", "ens1"), (2, "DOWN", "ens2")}


def test_gid_ndev_is_preferred(tree: SysfsTreeBuilder) -> None:
    """A RoCE port under LAG names the bond in `gid_attrs/ndevs/0`."""
    ports = {1: Port(link_layer="Ethernet", gid_ndev="bond0")}
    tree.hca("mlx5_bond_0", "pci0000:00/0000:00:02.0", ports=ports, netdev="ens1f0np0")
    (port,) = read_rdma_ports(SysfsTree(tree.root))
    assert port.netdev == "bond0"


def test_ipoib_child_interface_is_not_the_port_netdev(tree: SysfsTreeBuilder) -> None:
    fn = tree.hca("mlx5_0", "pci0000:00/0000:00:02.0", netdev="ib0")
    tree.netdev(fn, "ib0.8001")
    (port,) = read_rdma_ports(SysfsTree(tree.root))
    assert port.netdev == "ib0"


def test_virtual_rdma_device_is_skipped(tree: SysfsTreeBuilder) -> None:
    """Soft RoCE: no PCI function behind it, nothing to place."""
    tree.write("devices/virtual/infiniband/rxe0/ports/1/state", "4: ACTIVE")
    tree.link("class/infiniband/rxe0", "devices/virtual/infiniband/rxe0")
    assert read_rdma_ports(SysfsTree(tree.root)) == []


def test_rdma_malformed_port(tree: SysfsTreeBuilder) -> None:
    fn = tree.hca("mlx5_0", "pci0000:00/0000:00:02.0")
    tree.write(f"{fn}/infiniband/mlx5_0/ports/1/rate", "fast")
    with pytest.raises(DiscoveryError, match=r"class/infiniband/mlx5_0/ports/1/rate: expected"):
        read_rdma_ports(SysfsTree(tree.root))


def test_rdma_missing_state_and_link_layer(tree: SysfsTreeBuilder) -> None:
    fn = tree.hca("mlx5_0", "pci0000:00/0000:00:02.0")
    (tree.root / fn / "infiniband/mlx5_0/ports/1/link_layer").unlink()
    with pytest.raises(DiscoveryError, match=r"ports/1/link_layer: missing"):
        read_rdma_ports(SysfsTree(tree.root))


def test_rdma_device_link_out_of_the_root(tree: SysfsTreeBuilder, tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    tree.write("class/infiniband/mlx5_0/ports/1/state", "4: ACTIVE")
    (tree.root / "class/infiniband/mlx5_0/device").symlink_to("../../../../elsewhere")
    with pytest.raises(DiscoveryError, match="leads out of the sysfs root"):
        read_rdma_ports(SysfsTree(tree.root))


# --- verbs devices ---------------------------------------------------------------------


def test_verbs_numbers_are_read_from_the_kernel_not_from_the_names(
    tree: SysfsTreeBuilder,
) -> None:
    """udev renamed the devices, so the names sort the other way from the kernel's numbers."""
    tree.hca("ibp12s0", "pci0000:00/0000:00:01.0/0000:0c:00.0", uverbs=1)
    tree.hca("ibp7s0", "pci0000:00/0000:00:02.0/0000:07:00.0", uverbs=0)
    tree.write("class/infiniband_verbs/abi_version", "6")
    got = {p.device: p.uverbs for p in read_rdma_ports(SysfsTree(tree.root))}
    assert got == {"ibp12s0": 1, "ibp7s0": 0}


def test_without_ib_uverbs_no_device_has_a_number(tree: SysfsTreeBuilder) -> None:
    tree.hca("mlx5_0", "pci0000:00/0000:00:01.0")
    (port,) = read_rdma_ports(SysfsTree(tree.root))
    assert port.uverbs is None


def test_a_verbs_device_without_ibdev_is_skipped(tree: SysfsTreeBuilder) -> None:
    fn = tree.hca("mlx5_0", "pci0000:00/0000:00:01.0", uverbs=0)
    (tree.root / fn / "infiniband_verbs/uverbs0/ibdev").unlink()
    (port,) = read_rdma_ports(SysfsTree(tree.root))
    assert port.uverbs is None


def test_two_verbs_devices_for_one_rdma_device_are_refused(tree: SysfsTreeBuilder) -> None:
    fn = tree.hca("mlx5_0", "pci0000:00/0000:00:01.0", uverbs=0)
    tree.write(f"{fn}/infiniband_verbs/uverbs3/ibdev", "mlx5_0")
    tree.link("class/infiniband_verbs/uverbs3", f"{fn}/infiniband_verbs/uverbs3")
    with pytest.raises(DiscoveryError, match="mlx5_0 has two verbs devices, uverbs0 and uverbs3"):
        read_rdma_ports(SysfsTree(tree.root))
