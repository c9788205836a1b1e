# ruff: noqa: E501 (published tables, kept one row per line)
"""The shipped simulated nodes show the topologies they model.

Each node is generated to disk and read back the way discovery would (resolve
`bus/pci/devices/<bdf>`, read `numa_node`, follow `class/infiniband/*/device`, count NVML's
links), then classified with gpulet's link rules and compared with the published
`nvidia-smi topo -m` cell by cell.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from agent.discovery.nvml import NvmlGpu
from agent.simnode import SimulatedNode, open_simulated
from gpulet.topology.cpulist import parse_cpulist
from gpulet.topology.model import Gpu, Nic, NumaNode, PcieLocation, Topology

# `nvidia-smi topo -m` as published for one DGX A100 (tests/fixtures/published/dgx-a100.txt).
DGX_A100 = """
        GPU0 GPU1 GPU2 GPU3 GPU4 GPU5 GPU6 GPU7 mlx5_0 mlx5_1 mlx5_2 mlx5_3 mlx5_4 mlx5_5 mlx5_6 mlx5_7 mlx5_8 mlx5_9 mlx5_10 mlx5_11
GPU0    X    NV12 NV12 NV12 NV12 NV12 NV12 NV12 PXB    PXB    SYS    SYS    SYS    SYS    SYS    SYS    SYS    SYS    SYS     SYS     48-63,176-191   3
GPU1    NV12 X    NV12 NV12 NV12 NV12 NV12 NV12 PXB    PXB    SYS    SYS    SYS    SYS    SYS    SYS    SYS    SYS    SYS     SYS     48-63,176-191   3
GPU2    NV12 NV12 X    NV12 NV12 NV12 NV12 NV12 SYS    SYS    PXB    PXB    SYS    SYS    SYS    SYS    SYS    SYS    SYS     SYS     16-31,144-159   1
GPU3    NV12 NV12 NV12 X    NV12 NV12 NV12 NV12 SYS    SYS    PXB    PXB    SYS    SYS    SYS    SYS    SYS    SYS    SYS     SYS     16-31,144-159   1
GPU4    NV12 NV12 NV12 NV12 X    NV12 NV12 NV12 SYS    SYS    SYS    SYS    SYS    SYS    PXB    PXB    SYS    SYS    SYS     SYS     112-127,240-255 7
GPU5    NV12 NV12 NV12 NV12 NV12 X    NV12 NV12 SYS    SYS    SYS    SYS    SYS    SYS    PXB    PXB    SYS    SYS    SYS     SYS     112-127,240-255 7
GPU6    NV12 NV12 NV12 NV12 NV12 NV12 X    NV12 SYS    SYS    SYS    SYS    SYS    SYS    SYS    SYS    PXB    PXB    SYS     SYS     80-95,208-223   5
GPU7    NV12 NV12 NV12 NV12 NV12 NV12 NV12 X    SYS    SYS    SYS    SYS    SYS    SYS    SYS    SYS    PXB    PXB    SYS     SYS     80-95,208-223   5
mlx5_0  PXB  PXB  SYS  SYS  SYS  SYS  SYS  SYS  X      PXB    SYS    SYS    SYS    SYS    SYS    SYS    SYS    SYS    SYS     SYS
mlx5_1  PXB  PXB  SYS  SYS  SYS  SYS  SYS  SYS  PXB    X      SYS    SYS    SYS    SYS    SYS    SYS    SYS    SYS    SYS     SYS
mlx5_2  SYS  SYS  PXB  PXB  SYS  SYS  SYS  SYS  SYS    SYS    X      PXB    SYS    SYS    SYS    SYS    SYS    SYS    SYS     SYS
mlx5_3  SYS  SYS  PXB  PXB  SYS  SYS  SYS  SYS  SYS    SYS    PXB    X      SYS    SYS    SYS    SYS    SYS    SYS    SYS     SYS
mlx5_4  SYS  SYS  SYS  SYS  SYS  SYS  SYS  SYS  SYS    SYS    SYS    SYS    X      PIX    SYS    SYS    SYS    SYS    SYS     SYS
mlx5_5  SYS  SYS  SYS  SYS  SYS  SYS  SYS  SYS  SYS    SYS    SYS    SYS    PIX    X      SYS    SYS    SYS    SYS    SYS     SYS
mlx5_6  SYS  SYS  SYS  SYS  PXB  PXB  SYS  SYS  SYS    SYS    SYS    SYS    SYS    SYS    X      PXB    SYS    SYS    SYS     SYS
mlx5_7  SYS  SYS  SYS  SYS  PXB  PXB  SYS  SYS  SYS    SYS    SYS    SYS    SYS    SYS    PXB    X      SYS    SYS    SYS     SYS
mlx5_8  SYS  SYS  SYS  SYS  SYS  SYS  PXB  PXB  SYS    SYS    SYS    SYS    SYS    SYS    SYS    SYS    X      PXB    SYS     SYS
mlx5_9  SYS  SYS  SYS  SYS  SYS  SYS  PXB  PXB  SYS    SYS    SYS    SYS    SYS    SYS    SYS    SYS    PXB    X      SYS     SYS
mlx5_10 SYS  SYS  SYS  SYS  SYS  SYS  SYS  SYS  SYS    SYS    SYS    SYS    SYS    SYS    SYS    SYS    SYS    SYS    X       PIX
mlx5_11 SYS  SYS  SYS  SYS  SYS  SYS  SYS  SYS  SYS    SYS    SYS    SYS    SYS    SYS    SYS    SYS    SYS    SYS    PIX     X
"""

# The GPU rows published for one DGX H100 (tests/fixtures/published/dgx-h100.txt);
# NICn is mlx5_n.
DGX_H100 = """
     GPU0 GPU1 GPU2 GPU3 GPU4 GPU5 GPU6 GPU7 NIC0 NIC1 NIC2 NIC3 NIC4 NIC5 NIC6 NIC7 NIC8 NIC9 NIC10 NIC11
GPU0 X    NV18 NV18 NV18 NV18 NV18 NV18 NV18 PXB  NODE NODE NODE NODE NODE SYS  SYS  SYS  SYS  SYS   SYS   0-55,112-167   0
GPU1 NV18 X    NV18 NV18 NV18 NV18 NV18 NV18 NODE NODE NODE PXB  NODE NODE SYS  SYS  SYS  SYS  SYS   SYS   0-55,112-167   0
GPU2 NV18 NV18 X    NV18 NV18 NV18 NV18 NV18 NODE NODE NODE NODE PXB  NODE SYS  SYS  SYS  SYS  SYS   SYS   0-55,112-167   0
GPU3 NV18 NV18 NV18 X    NV18 NV18 NV18 NV18 NODE NODE NODE NODE NODE PXB  SYS  SYS  SYS  SYS  SYS   SYS   0-55,112-167   0
GPU4 NV18 NV18 NV18 NV18 X    NV18 NV18 NV18 SYS  SYS  SYS  SYS  SYS  SYS  PXB  NODE NODE NODE NODE  NODE  56-111,168-223 1
GPU5 NV18 NV18 NV18 NV18 NV18 X    NV18 NV18 SYS  SYS  SYS  SYS  SYS  SYS  NODE NODE NODE PXB  NODE  NODE  56-111,168-223 1
GPU6 NV18 NV18 NV18 NV18 NV18 NV18 X    NV18 SYS  SYS  SYS  SYS  SYS  SYS  NODE NODE NODE NODE PXB   NODE  56-111,168-223 1
GPU7 NV18 NV18 NV18 NV18 NV18 NV18 NV18 X    SYS  SYS  SYS  SYS  SYS  SYS  NODE NODE NODE NODE NODE  PXB   56-111,168-223 1
"""

_HOST_BRIDGE = re.compile(r"pci[0-9a-f]{4,8}:[0-9a-f]{2}")


def sysfs_bdf(nvml_bus_id: str) -> str:
    domain, rest = nvml_bus_id.split(":", 1)
    return f"{int(domain, 16):04x}:{rest.lower()}"


def location(sysfs: Path, link: Path) -> PcieLocation:
    """Where a function sits, from the directory a sysfs link resolves to."""
    target = Path(os.path.realpath(link))
    assert target.is_relative_to(sysfs.resolve()), f"{link} leaves the tree"
    parts = target.relative_to(sysfs.resolve()).parts
    start = max(i for i, part in enumerate(parts) if _HOST_BRIDGE.fullmatch(part))
    chain = parts[start + 1 :]
    return PcieLocation(pci=chain[-1], host_bridge=parts[start], bridges=tuple(chain[:-1]))


def numa_of(sysfs: Path, bdf: str) -> int:
    node = int((sysfs / "bus/pci/devices" / bdf / "numa_node").read_text())
    return max(node, 0)


def read_back(node: SimulatedNode) -> Topology:
    """The node's topology, read from its files only."""
    sysfs = node.sysfs
    by_bus_id = {g.pci_bus_id: g for g in node.nvml.gpus()}
    gpus = [_gpu(sysfs, g, by_bus_id) for g in node.nvml.gpus()]
    nics: list[Nic] = []
    rdma = sysfs / "class/infiniband"
    for name in sorted(os.listdir(rdma)) if rdma.exists() else []:
        device = sysfs / "class/infiniband" / name
        where = location(sysfs, device / "device")
        port = device / "ports/1"
        nics.append(
            Nic(
                name=name,
                port=1,
                location=where,
                numa=numa_of(sysfs, where.pci),
                netdev=None,
                state=(port / "state").read_text().split(":")[1].strip(),
                link=None,
                rate_gbps=float((port / "rate").read_text().split()[0]),
                link_layer=(port / "link_layer").read_text().strip(),
            )
        )
    numa = [
        NumaNode(int(d.name[4:]), parse_cpulist((d / "cpulist").read_text()), 0)
        for d in sorted((sysfs / "devices/system/node").glob("node*"))
    ]
    return Topology.build(node.name, gpus, nics, numa)


def _gpu(sysfs: Path, gpu: NvmlGpu, by_bus_id: dict[str, NvmlGpu]) -> Gpu:
    bdf = sysfs_bdf(gpu.pci_bus_id)
    peers: dict[int, int] = {}
    for link in gpu.nvlinks:
        if link.remote_type == "gpu":
            peer = by_bus_id[link.remote_pci].index
            peers[peer] = peers.get(peer, 0) + 1
    return Gpu(
        index=gpu.index,
        uuid=gpu.uuid,
        model=gpu.name,
        memory_mib=gpu.memory_total_bytes // 2**20,
        minor=gpu.minor,
        location=location(sysfs, sysfs / "bus/pci/devices" / bdf),
        numa=numa_of(sysfs, bdf),
        nvswitch_links=sum(1 for link in gpu.nvlinks if link.remote_type == "switch"),
        nvlink_peers=tuple(sorted(peers.items())),
    )


def published(table: str) -> tuple[list[str], dict[str, list[str]]]:
    """Device names and rows (cells after the row name; GPU rows end with CPU and NUMA
    affinity) of a `topo -m` table."""
    lines = table.strip("\n").splitlines()
    rows = {cells[0]: cells[1:] for cells in (line.split() for line in lines[1:])}
    return lines[0].split(), rows


@pytest.fixture(scope="module")
def dgx_a100() -> Topology:
    with open_simulated("dgx-a100") as node:
        return read_back(node)


@pytest.fixture(scope="module")
def dgx_h100() -> Topology:
    with open_simulated("dgx-h100") as node:
        return read_back(node)


def test_dgx_a100_matches_the_published_matrix_cell_by_cell(dgx_a100: Topology) -> None:
    columns, rows = published(DGX_A100)
    devices = columns
    assert sorted(rows) == sorted(devices)
    assert sorted(dgx_a100.links) == sorted(devices)
    for row, cells in rows.items():
        for column, cell in zip(devices, cells, strict=False):
            assert dgx_a100.link(row, column) == cell, f"{row} -> {column}"


def test_dgx_a100_gpus_have_the_published_cpu_and_numa_affinity(dgx_a100: Topology) -> None:
    _, rows = published(DGX_A100)
    for gpu in dgx_a100.gpus:
        cpus, numa = rows[gpu.name][-2:]
        assert gpu.numa == int(numa)
        node = dgx_a100.numa_node(gpu.numa)
        assert node is not None
        assert node.cpus == parse_cpulist(cpus)


def test_dgx_a100_places_gpu0_and_mlx5_0_where_nccl_saw_them(dgx_a100: Topology) -> None:
    nics = {n.name: n for n in dgx_a100.nics}
    assert dgx_a100.gpus[0].pci == "0000:07:00.0"
    assert nics["mlx5_0"].pci == "0000:0c:00.0"
    assert (nics["mlx5_4"].pci, nics["mlx5_5"].pci) == ("0000:61:00.0", "0000:61:00.1")
    assert nics["mlx5_4"].numa == 0
    assert nics["mlx5_0"].rate_gbps == 200
    assert nics["mlx5_0"].link_layer == "InfiniBand"


def test_dgx_h100_matches_the_published_gpu_rows_cell_by_cell(dgx_h100: Topology) -> None:
    columns, rows = published(DGX_H100)
    devices = [c.replace("NIC", "mlx5_") for c in columns]
    assert sorted(dgx_h100.links) == sorted(devices)
    for row, cells in rows.items():
        for column, cell in zip(devices, cells, strict=False):
            assert dgx_h100.link(row, column) == cell, f"{row} -> {column}"
        assert dgx_h100.gpus[int(row[3:])].numa == int(cells[-1])


def test_dgx_h100_pairs_gpus_and_nics_as_the_owners_guide(tmp_path: Path) -> None:
    guide = {
        0: ("mlx5_0", "ibp24s0"),
        1: ("mlx5_3", "ibp64s0"),
        2: ("mlx5_4", "ibp79s0"),
        3: ("mlx5_5", "ibp94s0"),
        4: ("mlx5_6", "ibp154s0"),
        5: ("mlx5_9", "ibp192s0"),
        6: ("mlx5_10", "ibp206s0"),
        7: ("mlx5_11", "ibp220s0"),
    }
    node = open_simulated("dgx-h100", into=tmp_path / "node")
    topo = read_back(node)
    for gpu in topo.gpus:
        nic, netdev = guide[gpu.index]
        assert [n for n in topo.links[gpu.name] if topo.link(gpu.name, n) == "PXB"] == [nic]
        net = node.sysfs / "class/infiniband" / nic / "device/net"
        assert os.listdir(net) == [netdev]
        rate = (node.sysfs / "class/infiniband" / nic / "ports/1/rate").read_text()
        assert rate == "400 Gb/sec (4X NDR)\n"


@pytest.mark.parametrize(
    ("name", "per_gpu", "per_switch"), [("dgx-a100", 12, 2), ("dgx-h100", 18, None)]
)
def test_nvswitch_gpus_link_only_to_nvswitches(
    name: str, per_gpu: int, per_switch: int | None
) -> None:
    with open_simulated(name) as node:
        switches = {
            bdf
            for bdf in os.listdir(node.sysfs / "bus/pci/devices")
            if (node.sysfs / "bus/pci/devices" / bdf / "class").read_text() == "0x068000\n"
        }
        for gpu in node.nvml.gpus():
            assert len(gpu.nvlinks) == per_gpu
            assert all(link.remote_type == "switch" and link.active for link in gpu.nvlinks)
            remotes = [sysfs_bdf(link.remote_pci) for link in gpu.nvlinks]
            assert set(remotes) == switches
            counts = sorted(remotes.count(s) for s in switches)
            assert counts == ([per_switch] * 6 if per_switch else [4, 4, 5, 5])


def test_h100_vm_is_the_measured_machine() -> None:
    with open_simulated("h100-vm") as node:
        (gpu,) = node.nvml.gpus()
        assert gpu.pci_bus_id == "00000000:00:06.0"
        assert gpu.uuid == "GPU-3ebba5ba-457d-495d-9ccc-6b9684c30591"
        assert gpu.name == "NVIDIA H100 80GB HBM3"
        assert gpu.memory_total_bytes == 81559 * 2**20
        assert (gpu.minor, gpu.mig_enabled, gpu.nvlinks) == (0, False, ())
        assert node.nvml.driver_version() == "580.159.04"
        listing = "".join(
            f"{bdf} {(node.sysfs / 'bus/pci/devices' / bdf / 'class').read_text().strip()} "
            f"{(node.sysfs / 'bus/pci/devices' / bdf / 'vendor').read_text().strip()} "
            f"{(node.sysfs / 'bus/pci/devices' / bdf / 'device').read_text().strip()} "
            f"numa={(node.sysfs / 'bus/pci/devices' / bdf / 'numa_node').read_text().strip()} "
            f"-> {os.readlink(node.sysfs / 'bus/pci/devices' / bdf).removeprefix('../../../')}\n"
            for bdf in sorted(os.listdir(node.sysfs / "bus/pci/devices"))
        )
        # the real VM's /sys/bus/pci/devices, as listed on 2026-11-22, verbatim
        assert listing == (
            "0000:00:00.0 0x060000 0x8086 0x0d57 numa=-1 -> devices/pci0000:00/0000:00:00.0\n"
            "0000:00:01.0 0x018000 0x1af4 0x1042 numa=-1 -> devices/pci0000:00/0000:00:01.0\n"
            "0000:00:02.0 0x018000 0x1af4 0x1042 numa=-1 -> devices/pci0000:00/0000:00:02.0\n"
            "0000:00:03.0 0x020000 0x1af4 0x1041 numa=-1 -> devices/pci0000:00/0000:00:03.0\n"
            "0000:00:04.0 0xffff00 0x1af4 0x1053 numa=-1 -> devices/pci0000:00/0000:00:04.0\n"
            "0000:00:05.0 0xffff00 0x1af4 0x1044 numa=-1 -> devices/pci0000:00/0000:00:05.0\n"
            "0000:00:06.0 0x030200 0x10de 0x2330 numa=-1 -> devices/pci0000:00/0000:00:06.0\n"
        )
        assert not (node.sysfs / "class/infiniband").exists()
        assert sorted(os.listdir(node.sysfs / "class/net")) == ["eth0", "ifb0", "ifb1", "lo"]
        eth0 = Path(os.path.realpath(node.sysfs / "class/net/eth0"))
        assert eth0.parent.parent.name == "virtio2"
        assert (eth0 / "operstate").read_text() == "up\n"
        assert (node.sysfs / "devices/system/node/node0/cpulist").read_text() == "0-15\n"
        assert (node.sysfs / "devices/system/node/online").read_text() == "0\n"
        topo = read_back(node)
        assert topo.gpus[0].location == PcieLocation("0000:00:06.0", "pci0000:00", ())
        assert (node.sysfs / "bus/pci/devices/0000:00:06.0/local_cpulist").read_text() == "0-15\n"


def test_pcie_4gpu_has_one_switch_of_two_gpus_and_a_roce_nic_per_socket() -> None:
    with open_simulated("pcie-4gpu") as node:
        topo = read_back(node)
    switches = topo.switches()
    assert sorted(
        ([g.index for g in gpus], [n.name for n in nics]) for gpus, nics in switches.values()
    ) == [
        ([0, 1], ["mlx5_0"]),
        ([2, 3], ["mlx5_1"]),
    ]
    assert topo.link("GPU0", "GPU1") == "PIX"
    assert topo.link("GPU0", "mlx5_0") == "PIX"
    assert topo.link("GPU1", "GPU2") == "SYS"
    assert [(g.model, g.memory_mib, g.numa) for g in topo.gpus] == [
        ("NVIDIA L40S", 46068, 0),
        ("NVIDIA L40S", 46068, 0),
        ("NVIDIA L40S", 46068, 1),
        ("NVIDIA L40S", 46068, 1),
    ]
    assert all((n.link_layer, n.rate_gbps) == ("Ethernet", 100.0) for n in topo.nics)


def test_pcie_16gpu_mixes_pix_and_pxb_with_bridged_pairs() -> None:
    with open_simulated("pcie-16gpu") as node:
        topo = read_back(node)
    assert (len(topo.gpus), len(topo.nics), len(topo.numa_nodes)) == (16, 16, 4)
    assert len(topo.switches()) == 8
    for k in range(8):
        a, b = f"GPU{2 * k}", f"GPU{2 * k + 1}"
        na, nb = f"mlx5_{2 * k}", f"mlx5_{2 * k + 1}"
        assert topo.link(a, b) == "NV4"
        assert (topo.link(a, na), topo.link(b, nb)) == ("PIX", "PIX")
        assert (topo.link(a, nb), topo.link(b, na)) == ("PXB", "PXB")
        assert topo.gpus[2 * k].numa == k // 2
    assert topo.link("GPU0", "GPU2") == "NODE"
    assert topo.link("GPU0", "mlx5_2") == "NODE"
    assert topo.link("GPU0", "GPU4") == "SYS"
    assert topo.link("GPU1", "GPU2") == "NODE"
