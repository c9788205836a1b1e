"""discover(): NVML GPUs placed in a sysfs tree, RDMA NICs, NUMA, and the link classes."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.discovery import DiscoveryError, discover
from agent.discovery.nvml import NvlinkInfo
from gpulet.topology.model import PcieLocation, Topology
from tests.fixtures.discovery.fake_nvml import FakeLinkState, FakeNvml, links_to, nvml_gpu
from tests.fixtures.discovery.sysfs_tree import Port, SysfsTreeBuilder


@pytest.fixture
def tree(tmp_path: Path) -> SysfsTreeBuilder:
    return SysfsTreeBuilder(tmp_path / "sys")


def run(tree: SysfsTreeBuilder, nvml: FakeNvml, links: FakeLinkState | None = None) -> Topology:
    return discover(tree.root, nvml, links or FakeLinkState(), "node-a")


def test_one_gpu_on_the_root_bus_of_a_vm(tree: SysfsTreeBuilder) -> None:
    """The lent H100 VM: GPU at 0000:00:06.0, numa_node -1, one NUMA node, no RDMA."""
    tree.numa_node(0, "0-15")
    tree.function("pci0000:00/0000:00:06.0", numa=-1, local_cpus="0-15")
    topo = run(tree, FakeNvml([nvml_gpu(0, "00000000:00:06.0")]))
    (gpu,) = topo.gpus
    assert gpu.location == PcieLocation("0000:00:06.0", "pci0000:00", ())
    assert gpu.numa == 0
    assert gpu.switch is None
    assert topo.nics == ()
    assert topo.links == {"GPU0": {"GPU0": "X"}}


def test_gpu_fields(tree: SysfsTreeBuilder) -> None:
    tree.numa_node(0, "0-7")
    tree.function("pci0000:00/0000:00:01.0/0000:07:00.0", numa=0)
    nvml = FakeNvml([nvml_gpu(0, "00000000:07:00.0", mig=True, memory_bytes=85_520_809_984)])
    topo = run(tree, nvml)
    (gpu,) = topo.gpus
    assert (gpu.index, gpu.uuid, gpu.model, gpu.minor, gpu.mig) == (
        0,
        "GPU-00000000-0000-0000-0000-000000000000",
        "NVIDIA H100 80GB HBM3",
        0,
        True,
    )
    assert gpu.memory_mib == 81559
    assert topo.node == "node-a"
    assert topo.driver == "580.159.04"


def test_gpu_bus_id_is_normalised(tree: SysfsTreeBuilder) -> None:
    tree.numa_node(0, "0-7")
    tree.function("pci0000:c0/0000:c0:01.0/0000:c7:00.0", numa=0)
    topo = run(tree, FakeNvml([nvml_gpu(0, "00000000:C7:00.0")]))
    assert topo.gpus[0].pci == "0000:c7:00.0"


def test_gpu_missing_from_sysfs(tree: SysfsTreeBuilder) -> None:
    tree.numa_node(0, "0-7")
    tree.function("pci0000:00/0000:00:01.0/0000:07:00.0", numa=0)
    nvml = FakeNvml([nvml_gpu(0, "00000000:07:00.0"), nvml_gpu(1, "00000000:0F:00.0")])
    with pytest.raises(DiscoveryError, match=r"GPU 1 \(0000:0f:00.0, reported by NVML\) has no"):
        run(tree, nvml)


def test_gpu_with_malformed_bus_id(tree: SysfsTreeBuilder) -> None:
    tree.numa_node(0, "0-7")
    with pytest.raises(DiscoveryError, match="malformed PCI bus id 'GPU0' for GPU 0"):
        run(tree, FakeNvml([nvml_gpu(0, "GPU0")]))


def test_gpu_indices_reported_twice(tree: SysfsTreeBuilder) -> None:
    tree.numa_node(0, "0-7")
    nvml = FakeNvml([nvml_gpu(0, "0000:07:00.0"), nvml_gpu(0, "0000:08:00.0")])
    with pytest.raises(DiscoveryError, match="more than once"):
        run(tree, nvml)


def test_gpu_on_a_numa_node_the_machine_lacks(tree: SysfsTreeBuilder) -> None:
    tree.numa_node(0, "0-7")
    tree.function("pci0000:00/0000:00:01.0/0000:07:00.0", numa=2)
    with pytest.raises(DiscoveryError, match=r"0000:07:00.0/numa_node: NUMA node 2 is not among"):
        run(tree, FakeNvml([nvml_gpu(0, "0000:07:00.0")]))


def test_gpu_link_out_of_the_root_is_refused(tree: SysfsTreeBuilder, tmp_path: Path) -> None:
    tree.numa_node(0, "0-7")
    outside = tmp_path / "host/devices/pci0000:00/0000:07:00.0"
    outside.mkdir(parents=True)
    (outside / "numa_node").write_text("0\n")
    link = tree.root / "bus/pci/devices/0000:07:00.0"
    link.parent.mkdir(parents=True)
    link.symlink_to("../../../../host/devices/pci0000:00/0000:07:00.0")
    with pytest.raises(DiscoveryError, match="leads out of the sysfs root"):
        run(tree, FakeNvml([nvml_gpu(0, "0000:07:00.0")]))


def test_numa_minus_one_follows_local_cpulist(tree: SysfsTreeBuilder) -> None:
    tree.numa_node(0, "0-3")
    tree.numa_node(1, "4-7")
    tree.function("pci0000:00/0000:00:01.0/0000:07:00.0", numa=-1, local_cpus="4-7")
    tree.function("pci0000:80/0000:80:01.0/0000:87:00.0", numa=-1, local_cpus="0-7")
    nvml = FakeNvml([nvml_gpu(0, "0000:07:00.0"), nvml_gpu(1, "0000:87:00.0")])
    assert [g.numa for g in run(tree, nvml).gpus] == [1, 0]


def test_nvlinks(tree: SysfsTreeBuilder) -> None:
    """Switch links count toward the fabric; direct links per peer; inactive ones not at all."""
    tree.numa_node(0, "0-7")
    buses = ["0000:07:00.0", "0000:0f:00.0", "0000:47:00.0"]
    for bus in buses:
        tree.function(f"pci0000:00/0000:00:01.0/{bus}", numa=0)
    g0 = (
        *links_to("00000000:C7:00.0", 12, "switch"),
        *links_to("00000000:0F:00.0", 2, "gpu", first=12),
        NvlinkInfo(14, False, "", "unknown"),
        *links_to("00000000:99:00.0", 1, "gpu", first=15),  # a GPU NVML does not list
        *links_to("00000000:07:00.0", 1, "gpu", first=16),  # itself
    )
    g1 = (
        *links_to("00000000:C8:00.0", 10, "switch"),
        *links_to("00000000:07:00.0", 2, "gpu", first=10),
        NvlinkInfo(12, False, "00000000:C8:00.0", "switch"),
    )
    nvml = FakeNvml(
        [
            nvml_gpu(0, buses[0], nvlinks=g0),
            nvml_gpu(1, buses[1], nvlinks=g1),
            nvml_gpu(2, buses[2]),
        ]
    )
    topo = run(tree, nvml)
    assert [(g.nvswitch_links, g.nvlink_peers) for g in topo.gpus] == [
        (12, ((1, 2),)),
        (10, ((0, 2),)),
        (0, ()),
    ]
    assert topo.link("GPU0", "GPU1") == "NV12"  # 2 direct + min(12, 10) through the fabric
    assert topo.link("GPU0", "GPU2") == "PIX"


def test_malformed_remote_bus_id(tree: SysfsTreeBuilder) -> None:
    tree.numa_node(0, "0-7")
    tree.function("pci0000:00/0000:00:01.0/0000:07:00.0", numa=0)
    nvml = FakeNvml([nvml_gpu(0, "0000:07:00.0", nvlinks=links_to("?", 1, "gpu"))])
    with pytest.raises(DiscoveryError, match=r"remote PCI bus id '\?' on GPU 0 link 0"):
        run(tree, nvml)


def test_nics(tree: SysfsTreeBuilder) -> None:
    tree.numa_node(0, "0-3")
    tree.numa_node(1, "4-7")
    ports = {1: Port(), 2: Port(state="1: DOWN", rate="100 Gb/sec (2X HDR)")}
    fn = tree.hca("mlx5_0", "pci0000:80/0000:80:01.0/0000:81:00.0", numa=1, ports=ports)
    tree.netdev(fn, "ibp129s0", dev_port=0)
    tree.netdev(fn, "ibp129s0d1", dev_port=1)
    tree.hca("mlx5_1", "pci0000:00/0000:00:02.0", numa=-1, local_cpus="0-3")
    links = FakeLinkState({"ibp129s0": "UP", "ibp129s0d1": "DOWN"})
    topo = run(tree, FakeNvml(), links)
    got = [(n.key, n.numa, n.netdev, n.state, n.link, n.rate_gbps, n.link_layer) for n in topo.nics]
    assert got == [
        ("mlx5_0", 1, "ibp129s0", "ACTIVE", "UP", 400.0, "InfiniBand"),
        ("mlx5_0:2", 1, "ibp129s0d1", "DOWN", "DOWN", 100.0, "InfiniBand"),
        ("mlx5_1", 0, None, "ACTIVE", None, 400.0, "InfiniBand"),
    ]
    assert topo.gpus == ()


def test_nic_on_a_numa_node_the_machine_lacks(tree: SysfsTreeBuilder) -> None:
    tree.numa_node(0, "0-7")
    tree.hca("mlx5_0", "pci0000:00/0000:00:02.0", numa=5)
    with pytest.raises(DiscoveryError, match=r"0000:00:02.0/numa_node: NUMA node 5 is not"):
        run(tree, FakeNvml())


def test_link_classes(tree: SysfsTreeBuilder) -> None:
    r"""One tree with every PCIe link class.

    pci0000:00 (NUMA 0)
      00:01.0 root port - 01:00.0 switch up
          02:00.0 down - GPU0 03:00.0
          02:01.0 down - mlx5_0 04:00.0                   GPU0-mlx5_0 PIX
          02:02.0 down - 05:00.0 switch up - 06:00.0 down - GPU1 07:00.0
                                                          GPU0-GPU1 PXB
      00:02.0 root port - GPU2 08:00.0                    GPU0-GPU2 PHB
      00:05.0, 00:05.1: mlx5_1, mlx5_2 (one card)         PIX to each other
    pci0000:40 (NUMA 0): 40:01.0 - GPU3 41:00.0           GPU0-GPU3 NODE
    pci0000:80 (NUMA 1): 80:01.0 - GPU4 81:00.0           GPU0-GPU4 SYS
    """
    tree.numa_node(0, "0-3")
    tree.numa_node(1, "4-7")
    sw = "pci0000:00/0000:00:01.0/0000:01:00.0"
    paths = [
        f"{sw}/0000:02:00.0/0000:03:00.0",
        f"{sw}/0000:02:02.0/0000:05:00.0/0000:06:00.0/0000:07:00.0",
        "pci0000:00/0000:00:02.0/0000:08:00.0",
        "pci0000:40/0000:40:01.0/0000:41:00.0",
        "pci0000:80/0000:80:01.0/0000:81:00.0",
    ]
    for i, path in enumerate(paths):
        tree.function(path, numa=1 if i == 4 else 0)
    tree.hca("mlx5_0", f"{sw}/0000:02:01.0/0000:04:00.0", numa=0)
    tree.hca("mlx5_1", "pci0000:00/0000:00:05.0", numa=0)
    tree.hca("mlx5_2", "pci0000:00/0000:00:05.1", numa=0)
    nvml = FakeNvml([nvml_gpu(i, p.rsplit("/", 1)[1]) for i, p in enumerate(paths)])
    topo = run(tree, nvml)
    row = topo.links["GPU0"]
    assert [row[f"GPU{i}"] for i in range(5)] == ["X", "PXB", "PHB", "NODE", "SYS"]
    assert [row[n] for n in ("mlx5_0", "mlx5_1", "mlx5_2")] == ["PIX", "PHB", "PHB"]
    assert topo.link("GPU1", "mlx5_0") == "PXB"
    assert topo.link("mlx5_1", "mlx5_2") == "PIX"
    assert topo.link("GPU4", "mlx5_0") == "SYS"
    switches = topo.switches()
    assert list(switches) == ["0000:01:00.0"]
    gpus, nics = switches["0000:01:00.0"]
    assert [g.index for g in gpus] == [0, 1]
    assert [n.key for n in nics] == ["mlx5_0"]
