"""Discovery on the simulated DGX nodes reproduces the published `nvidia-smi topo -m`."""

from __future__ import annotations

import pytest

from gpulet.topology.cpulist import format_cpulist
from gpulet.topology.model import PcieLocation
from tests.fixtures.discovery.published import (
    load_compute_ports,
    load_published,
    parse_topo_matrix,
)
from tests.nodes import shipped


@pytest.mark.parametrize("name", ["dgx-a100", "dgx-h100"])
def test_link_matrix_matches_published(name: str) -> None:
    published = load_published(name)
    topo = shipped(name)
    wrong = [
        f"{row}-{col}: published {want}, discovered {topo.links.get(row, {}).get(col)}"
        for row, cells in published.links.items()
        for col, want in cells.items()
        if topo.links.get(row, {}).get(col) != want
    ]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("name", ["dgx-a100", "dgx-h100"])
def test_affinity_matches_published(name: str) -> None:
    published = load_published(name)
    topo = shipped(name)
    assert len(topo.gpus) == len(published.numa_affinity) == 8
    for gpu in topo.gpus:
        node = topo.numa_node(gpu.numa)
        assert node is not None, gpu.name
        assert str(gpu.numa) == published.numa_affinity[gpu.name], gpu.name
        assert format_cpulist(node.cpus) == published.cpu_affinity[gpu.name], gpu.name


@pytest.mark.parametrize(("name", "nics"), [("dgx-a100", 12), ("dgx-h100", 12)])
def test_every_published_nic_is_discovered(name: str, nics: int) -> None:
    published = load_published(name)
    topo = shipped(name)
    assert sorted(n.key for n in topo.nics) == sorted(d for d in published.devices if "mlx5" in d)
    assert len(topo.nics) == nics


def test_dgx_h100_compute_ports_match_the_owners_guide() -> None:
    """Each GPU's PXB NIC is the guide's 400G port, with the guide's netdev and socket."""
    topo = shipped("dgx-h100")
    ports = load_compute_ports("dgx-h100")
    assert len(ports) == 8
    nics = {n.key: n for n in topo.nics}
    for port in ports:
        nic = nics[port.rdma]
        assert (nic.netdev, nic.numa, nic.rate_gbps) == (port.netdev, port.cpu, 400.0), port
        assert topo.link(f"GPU{port.gpu}", port.rdma) == "PXB", port


def test_h100_vm() -> None:
    """The lent H100: one GPU straight on the root bus, one NUMA node, no RDMA."""
    topo = shipped("h100-vm")
    (gpu,) = topo.gpus
    assert gpu.location == PcieLocation("0000:00:06.0", "pci0000:00", ())
    assert gpu.numa == 0
    assert topo.nics == ()
    assert [n.id for n in topo.numa_nodes] == [0]


def test_parser_reads_nic_aliases_and_affinity() -> None:
    text = (
        "# comment\n"
        "\tGPU0\tNIC0\tCPU Affinity\tNUMA Affinity\n"
        "GPU0\t X \tPXB\t0-55,112-167\t0\n"
        "NIC0\tPXB\t X \n"
    )
    m = parse_topo_matrix(text)
    assert m.devices == ("GPU0", "mlx5_0")
    assert m.links == {
        "GPU0": {"GPU0": "X", "mlx5_0": "PXB"},
        "mlx5_0": {"GPU0": "PXB", "mlx5_0": "X"},
    }
    assert m.cpu_affinity == {"GPU0": "0-55,112-167"}
    assert m.numa_affinity == {"GPU0": "0"}


def test_parser_reads_the_published_files() -> None:
    a100, h100 = load_published("dgx-a100"), load_published("dgx-h100")
    assert len(a100.links) == 20  # 8 GPU rows and 12 NIC rows
    assert len(h100.links) == 8  # GPU rows only
    assert h100.links["GPU1"]["mlx5_3"] == "PXB"
    assert a100.links["mlx5_4"]["mlx5_5"] == "PIX"
